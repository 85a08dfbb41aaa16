"""GLIDE's sampling flow on its released UNets, as glide-text2im's notebooks run it.

- base (base.pt, 64x64): the caption's tokens and an empty caption's tokens in one batch, classifier-free
  guidance on ε (scale 3), ancestral steps along "100", x̂0 clipped.
- upsampler (upsample.pt, 64 -> 256): the base samples quantised to 8 bits as `low_res`, the caption's
  tokens, no guidance, DDIM along "fast27" from x_T drawn with temperature 0.997.
- inpainting (base_inpaint.pt, upsample_inpaint.pt): the models also see [image · known, known], and the
  known pixels are pasted into x̂0 at every step (GLIDE's `denoised_fn`), so the kept region is exact.

Captions are tokenised with the model's own BPE (`RealModel.tokenizer`, attached by the loader); the
negative caption (default "") is the unconditional half, GLIDE's empty token list.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nodegraph.diffusion.inpainting import inpaint_conditioned
from nodegraph.errors import ConditionError, InputValueError
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.generate.released import Callback, Steps, batch_of, expand, guided, require, run
from nodegraph.models.real import RealModel
from nodegraph.models.resize import fit_square

BASE_STEPS = Steps("ddpm")
UPSAMPLE_STEPS = Steps("ddim", respacing="fast27")
INPAINT_UPSAMPLE_STEPS = Steps("ddpm", respacing="fast27")  # the inpainting notebook's ancestral upsampling
UPSAMPLE_TEMPERATURE = 0.997
MAX_CAPTION_CHARS = 1000


def tokens(model: RealModel, text: str, input: str = "prompt") -> dict[str, Tensor]:
    """{"tokens", "mask"} [1, text_ctx] for one caption (cut to the model's context, as GLIDE does)."""
    tokenizer = model.tokenizer
    if len(text) > MAX_CAPTION_CHARS:  # GLIDE reads 128 tokens; BPE on a huge word is quadratic in its length
        raise InputValueError(input, f"the caption has {len(text)} characters; GLIDE reads at most "
                              f"{model.config.text_ctx} tokens, so give at most {MAX_CAPTION_CHARS}")
    if tokenizer is None:
        raise ConditionError("this GLIDE model was loaded without its vocabulary; load it with a GLIDE loader", input)
    try:
        ids = tokenizer.encode(text)
    except UnicodeEncodeError:
        raise InputValueError(input, "the caption is not valid text (it holds a lone surrogate)") from None
    except KeyError as exc:  # a symbol the vocabulary lacks: not GLIDE's vocabulary
        raise ConditionError(f"the vocabulary has no symbol {exc}; it is not GLIDE's encoder.json", "vocab") from None
    ids, mask = tokenizer.padded(ids, model.config.text_ctx)
    device = model.device
    return {"tokens": torch.tensor([ids], device=device), "mask": torch.tensor([mask], device=device)}


def quantize(images: Tensor) -> Tensor:
    """Images as the 8-bit PNG the upsampler was trained to read: ((x + 1)·127.5).round() / 127.5 − 1."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def text2img(model: RealModel, prompt: str, noise: NoiseSpec, *, guidance_scale: float = 3.0, negative: str = "",
             steps: Steps = BASE_STEPS, callback: Callback | None = None) -> Tensor:
    """64x64 images [B, 3, 64, 64] in [-1, 1] from GLIDE's base model (B = the noise's batch)."""
    require(model, "glide_base", "model")
    size = model.config.image_size
    x = noise.initial((3, size, size), model.device)
    fn = guided(model, tokens(model, prompt), tokens(model, negative, "negative"), guidance_scale)
    return run(model, fn, x, steps, noise, callback=callback).clamp(-1, 1)


@torch.no_grad()
def upsample(model: RealModel, images: Tensor, prompt: str, noise: NoiseSpec, *,
             temperature: float = UPSAMPLE_TEMPERATURE, steps: Steps = UPSAMPLE_STEPS,
             callback: Callback | None = None) -> Tensor:
    """GLIDE's upsampler: low-resolution images (any size; resized to the model's input by the network) ->
    [B, 3, S, S] at the model's resolution, conditioned on the caption."""
    require(model, "glide_upsample", "upsampler")
    low = quantize(images.to(model.device))
    b = low.shape[0]
    size = model.config.image_size
    x = noise.initial((3, size, size), model.device, count=b) * temperature
    fn = guided(model, {**tokens(model, prompt), "low_res": low}, None, 1.0)
    return run(model, fn, x, steps, noise, callback=callback).clamp(-1, 1)


@torch.no_grad()
def inpaint(model: RealModel, images: Tensor, mask: Tensor, prompt: str, noise: NoiseSpec, *,
            low_res: Tensor | None = None, guidance_scale: float = 3.0, negative: str = "",
            temperature: float = UPSAMPLE_TEMPERATURE, steps: Steps | None = None,
            callback: Callback | None = None) -> Tensor:
    """Regenerate where `mask` = 1 (the MASK socket's polarity) with GLIDE's inpainting models; elsewhere the
    result equals `images` (centre-cropped and resized to the model's resolution) exactly.

    The base inpainting model takes classifier-free guidance; the inpainting upsampler takes the base's
    64x64 result as `low_res` (quantised like the plain upsampler's) and x_T drawn with `temperature`.
    """
    upsampler = model.kind == "glide_upsample_inpaint"
    if not upsampler:
        require(model, "glide_inpaint", "model")
    elif low_res is None:
        raise ConditionError("the inpainting upsampler refines a low-resolution result: connect it", "low_res")
    size, device = model.config.image_size, model.device
    image = fit_square(images.to(device), size)
    known = 1 - fit_square(mask.to(device, image.dtype), size).round()  # the MASK socket says 1 = repaint
    b = batch_of(noise, image, known, low_res)
    image, known = expand(image, b, "images"), expand(known, b, "mask")
    cond = {**tokens(model, prompt), "inpaint_image": image * known, "inpaint_mask": known}
    x = noise.initial((3, size, size), device, count=b)
    if upsampler:
        cond["low_res"] = expand(quantize(low_res.to(device)), b, "low_res")
        fn = guided(model, cond, None, 1.0)
        x = x * temperature
        steps = steps or INPAINT_UPSAMPLE_STEPS
    else:
        null = {**tokens(model, negative, "negative"), "inpaint_image": cond["inpaint_image"], "inpaint_mask": known}
        fn = guided(model, cond, null, guidance_scale)
        steps = steps or BASE_STEPS
    settings = model.diffusion
    out = inpaint_conditioned(
        settings.build(), fn, image, known, x, sampler=steps.sampler, timesteps=steps.timesteps(settings),
        eta=steps.eta, generator=noise.sampler_generator(device), callback=callback,
        clip_denoised=settings.clip_denoised,
    )
    return out.clamp(-1, 1)


__all__ = ["BASE_STEPS", "UPSAMPLE_STEPS", "inpaint", "quantize", "text2img", "tokens", "upsample"]
