"""Karlo's unCLIP pipeline on its released networks, as kakaobrain/karlo's samplers run it.

- prior: CLIP ViT-L/14's text embedding and token states for the caption and for an empty caption,
  classifier-free guidance on the predicted x0 (scale 4), ancestral steps along "25", x̂0 clamped to ±10
  (not clipped), then de-normalised with the CLIP statistics: a raw image embedding.
- decoder: guidance (scale 8) between [image embedding, caption] and [the learned null embedding
  `cf_param`, empty caption]; ancestral steps along "50"; x̂0 clipped.
- super-resolution: the 64x64 result clamped and resized bicubically (antialiased) to 256x256 as
  `low_res`; ancestral steps along "7"; every step by `model_first_steps` but the last, which
  `model_last_step` takes.
- variations (Karlo's i2i): the image's CLIP embedding (resized to 224 bicubically, OpenAI's
  normalisation, not unit-normalised) in place of the prior's sample, with empty captions.

Karlo's image embeddings are CLIP's raw image features (its prior learnt them normalised by the statistics
file), unlike the unit-norm IMAGE_EMBED of the bundled models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import ConditionError
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.generate.released import Callback, Steps, batch_of, expand, guided, require, run
from nodegraph.models.clip import ClipModel, TextEncoding
from nodegraph.models.karlo import upsample_low_res
from nodegraph.models.real import RealModel
from nodegraph.models.resize import center_crop

KARLO_STEPS = Steps("ddpm")


def _text(model: RealModel, text: TextEncoding, input: str) -> dict[str, Tensor]:
    """The caption's pooled embedding and token states, checked against what the network was built for."""
    c = model.config
    dim, ctx = c.clip_dim, c.text_ctx
    if text.embed.shape[-1] != dim or text.tokens.shape[-1] != dim or text.tokens.shape[1] != ctx:
        raise ConditionError(f"Karlo reads CLIP ViT-L/14 text ({ctx} tokens of width {dim}, a {dim}-d embedding), got "
                             f"{text.tokens.shape[1]} tokens of width {text.tokens.shape[-1]}: encode the caption with "
                             "the CLIP Karlo was trained with", input)
    device = model.device
    return {"embed": text.embed.float().to(device), "seq": text.tokens.float().to(device), "mask": text.mask.to(device)}


@torch.no_grad()
def prior(model: RealModel, text: TextEncoding, null_text: TextEncoding, noise: NoiseSpec, *,
          guidance_scale: float = 4.0, steps: Steps = KARLO_STEPS, callback: Callback | None = None) -> Tensor:
    """Raw CLIP image embeddings [B, clip_dim] for a caption (B = the noise's batch, or the caption's)."""
    require(model, "karlo_prior", "prior")
    t, n = _text(model, text, "text"), _text(model, null_text, "null_text")
    b = batch_of(noise, t["embed"])
    cond = {"text_emb": expand(t["embed"], b, "text"), "text_enc": expand(t["seq"], b, "text"),
            "mask": expand(t["mask"], b, "text")}
    null = {"text_emb": n["embed"], "text_enc": n["seq"], "mask": n["mask"]}
    x = noise.initial((model.config.clip_dim,), model.device, count=b)
    z = run(model, guided(model, cond, null, guidance_scale), x, steps, noise, callback=callback)
    return model.net.denormalize(z)


@torch.no_grad()
def decode(model: RealModel, image_embed: Tensor, text: TextEncoding, null_text: TextEncoding, noise: NoiseSpec, *,
           guidance_scale: float = 8.0, steps: Steps = KARLO_STEPS, callback: Callback | None = None) -> Tensor:
    """64x64 images [B, 3, 64, 64] in [-1, 1] from raw image embeddings and the caption."""
    require(model, "karlo_decoder", "decoder")
    c = model.config
    if image_embed.ndim != 2 or image_embed.shape[-1] != c.clip_dim:
        raise ConditionError(f"the decoder reads [B, {c.clip_dim}] image embeddings, got {tuple(image_embed.shape)}",
                             "image_embed")
    t, n = _text(model, text, "text"), _text(model, null_text, "null_text")
    emb = image_embed.float().to(model.device)
    b = batch_of(noise, emb, t["embed"])
    cond = {"image_embed": expand(emb, b, "image_embed"), "text_embed": expand(t["embed"], b, "text"),
            "text_seq": expand(t["seq"], b, "text"), "mask": expand(t["mask"], b, "text")}
    null = {"image_embed": model.net.null_image_embed(1).float(), "text_embed": n["embed"], "text_seq": n["seq"],
            "mask": n["mask"]}
    size = c.image_size
    x = noise.initial((c.in_channels, size, size), model.device, count=b)
    return run(model, guided(model, cond, null, guidance_scale), x, steps, noise, callback=callback).clamp(-1, 1)


@torch.no_grad()
def super_resolve(model: RealModel, images: Tensor, noise: NoiseSpec, *, steps: Steps = KARLO_STEPS,
                  callback: Callback | None = None) -> Tensor:
    """Karlo's 64 -> 256 super-resolution of [B, 3, h, w] images; the last step runs `model_last_step`."""
    require(model, "karlo_sr", "sr_model")
    size = model.config.image_size
    low = upsample_low_res(center_crop(images.to(model.device).float()), size)
    x = noise.initial((3, size, size), model.device, count=low.shape[0])
    timesteps = steps.timesteps(model.diffusion)
    last = timesteps[-1]
    net = model.net

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        # One network per step, chosen by the step's timestep: the final one is the fine-tuned network's.
        return net(x_t, t, low, last_step=int(t[0]) == last)

    return run(model, model_fn, x, steps, noise, callback=callback).clamp(-1, 1)


@torch.no_grad()
def image_embed(clip: ClipModel, images: Tensor) -> Tensor:
    """Raw CLIP image embeddings [B, D] of [B, 3, H, W] images in [-1, 1], preprocessed as Karlo's i2i does:
    centre-cropped, resized bicubically (antialiased) to the tower's input, OpenAI's normalisation."""
    x = (center_crop(images.to(clip.device).float()) + 1) / 2
    side = clip.image_size
    x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    x = (x - clip.mean.to(x)) / clip.std.to(x)
    return clip.model.encode_image(x).float()


__all__ = ["KARLO_STEPS", "decode", "image_embed", "prior", "super_resolve"]
