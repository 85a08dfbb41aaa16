"""Sampling nodes: Noise, Prior, Decoder, Upsample, DDIMInvert, Inpaint.

Each adapts its sockets to a function of `nodegraph.generate.sampling`; progress is reported every
step with an x̂0 preview, which is also where an interrupt takes effect.
"""

from __future__ import annotations

import torch

from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.errors import InputValueError
from nodegraph.generate import sampling as S
from nodegraph.generate.conditions import Condition, ConditionError, Guidance, Latent, NoiseSpec
from nodegraph.models.clip import TextEncoding
from nodegraph.models.diffusion_model import DiffusionModel
from nodegraph.nodes._common import (
    CONDITION_INPUTS,
    SAMPLER_INPUTS,
    as_input_error,
    build_guidance,
    progress_callback,
    settings,
    to_resolution,
)


class Noise(Node):
    """A seeded starting noise and batch size; every sampler draws its x_T from it in its own shape."""

    category = "sampling"
    inputs = {
        "seed": In("INT", default=0, min=0, max=2**63 - 1, description="random seed"),
        "batch_size": In("INT", default=1, min=1, max=64, description="images per run"),
    }
    outputs = (Out("NOISE", "noise"),)

    def run(self, ctx: RunContext, seed: int, batch_size: int) -> tuple[NoiseSpec]:
        return (NoiseSpec(seed, batch_size),)


class Prior(Node):
    """DALL·E 2 prior: samples CLIP image embeddings for a caption (classifier-free guided, best of k)."""

    category = "sampling"
    inputs = {
        "prior": In("PRIOR"),
        "text": In("TEXT_EMBED", description="the caption"),
        "noise": In("NOISE", description="seed and batch size"),
        "guidance_scale": In("FLOAT", default=2.0, min=0.0, max=50.0, step=0.5,
                             description="classifier-free guidance on x̂0 (1 = conditional)"),
        "best_of": In("INT", default=2, min=1, max=8, description="draw k embeddings, keep the closest to "
                      "the text (DALL·E 2 uses 2)"),
        "guidance": In("GUIDANCE", optional=True, description="composable guidance over several captions; "
                       "replaces guidance_scale when connected"),
        **{**SAMPLER_INPUTS, "steps": In("INT", default=25, min=1, max=1000, description="denoising steps")},
    }
    outputs = (Out("IMAGE_EMBED", "image_embed"),)

    def run(self, ctx: RunContext, prior: DiffusionModel, text: TextEncoding, noise: NoiseSpec,
            guidance_scale: float, best_of: int, guidance: Guidance | None, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[torch.Tensor]:
        x_T = noise.initial((prior.net.cfg.clip_dim,), prior.device, count=noise.batch * best_of)
        try:
            emb = S.sample_prior(
                prior, Condition(text=text), guidance_scale, settings(sampler, steps, respacing, eta), noise.batch,
                generator=noise.sampler_generator(prior.device), callback=progress_callback(ctx, preview=False),
                best_of=best_of, guidance=guidance, x_T=x_T,
            )
        except ConditionError as exc:
            raise as_input_error("text", exc) from None
        return (emb,)


class Decoder(Node):
    """Decoder (GLIDE / unCLIP): images from text, a CLIP image embedding, both, or nothing.

    Given a LATENT from DDIMInvert, it starts from that x_T and walks the same timesteps with DDIM:
    with eta 0 and the inversion's condition it reconstructs the image, with another condition it edits
    it; with eta > 0 it draws DALL·E 2 variations of the bipartite latent (image embedding, x_T), one per
    noise seed (connect a Noise node for the seed and the batch).
    """

    category = "sampling"
    inputs = {
        "decoder": In("DECODER"),
        "noise": In("NOISE", optional=True, description="seed and batch size (or connect a latent)"),
        "latent": In("LATENT", optional=True, description="start from a DDIM-inverted x_T"),
        **CONDITION_INPUTS,
        **SAMPLER_INPUTS,
    }
    outputs = (Out("IMAGE", "images"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, noise: NoiseSpec | None, latent: Latent | None,
            text, image_embed, guidance_scale: float, guidance: Guidance | None, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[torch.Tensor]:
        if decoder.kind != "decoder":
            raise InputValueError("decoder", f"this is a {decoder.kind} model; the Decoder node needs a decoder "
                                  "(use the Inpaint node for inpainting models)")
        g = build_guidance(text, image_embed, guidance_scale, guidance)
        size = decoder.net.cfg.image_size
        cfg = settings(sampler, steps, respacing, eta)
        if latent is not None:
            if sampler != "ddim":
                raise InputValueError("sampler", f"a DDIM-inverted latent is decoded with DDIM along its own "
                                      f"timesteps; set sampler to 'ddim' (got {sampler!r})")
            # One latent decoded under several conditions (a text diff at several θ) or several noise
            # seeds (variations) is broadcast.
            b = max(latent.x.shape[0], g.batch(), noise.batch if noise is not None else 1)
            if latent.x.shape[0] not in (1, b):
                raise InputValueError("latent", f"latent batch {latent.x.shape[0]} vs condition/noise batch {b}")
            x, timesteps = latent.x.to(decoder.device).expand(b, -1, -1, -1), list(latent.timesteps)
            gen = (noise or NoiseSpec(0)).sampler_generator(decoder.device)
        elif noise is not None:
            # Conditions with a batch (several embeddings) get one noise each when the noise batch is 1.
            b = noise.batch if noise.batch > 1 else g.batch()
            x, timesteps = noise.initial((3, size, size), decoder.device, count=b), None
            gen = noise.sampler_generator(decoder.device)
        else:
            raise InputValueError("noise", "connect a Noise node (or a latent from DDIMInvert)")
        try:
            out = S.run_denoiser(decoder, x, g, cfg, generator=gen, callback=progress_callback(ctx),
                                 timesteps=timesteps)
        except ConditionError as exc:
            raise as_input_error("guidance" if guidance is not None else "text", exc) from None
        return (out.clamp(-1, 1),)


class Upsample(Node):
    """Diffusion upsampler: 32×32 images to 64×64 (noise-augmented low-res conditioning)."""

    category = "sampling"
    inputs = {
        "upsampler": In("UPSAMPLER"),
        "images": In("IMAGE", description="low-resolution images in [-1, 1]"),
        "noise": In("NOISE", optional=True, description="seed (batch comes from the images); default seed 0"),
        "aug_level": In("INT", default=-1, min=-1, max=999, description="noise level applied to the low-res "
                        "input; -1 = the level the checkpoint was evaluated with"),
        "guidance": In("GUIDANCE", optional=True, description="classifier / CLIP guidance terms"),
        **{**SAMPLER_INPUTS, "steps": In("INT", default=20, min=1, max=1000, description="denoising steps")},
    }
    outputs = (Out("IMAGE", "images"),)

    def run(self, ctx: RunContext, upsampler: DiffusionModel, images: torch.Tensor, noise: NoiseSpec | None,
            aug_level: int, guidance: Guidance | None, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[torch.Tensor]:
        if guidance is not None and guidance.conditions:
            raise InputValueError("guidance", "the upsampler takes no text or image embedding; "
                                  "only classifier / CLIP terms apply")
        seed = noise.seed if noise is not None else 0
        gen = torch.Generator(device=upsampler.device).manual_seed(seed)
        low = to_resolution(images.to(upsampler.device), upsampler.meta.get("low_res", 32))
        out = S.upsample(upsampler, low, settings(sampler, steps, respacing, eta), generator=gen,
                         callback=progress_callback(ctx), aug_level=None if aug_level < 0 else aug_level,
                         guidance=guidance)
        return (out,)


class DDIMInvert(Node):
    """DDIM inversion: the x_T that deterministic DDIM maps back to the given images (under a condition)."""

    category = "sampling"
    inputs = {
        "decoder": In("DECODER"),
        "images": In("IMAGE", description="images to invert (resized to the decoder's resolution)"),
        "text": In("TEXT_EMBED", optional=True, description="caption the images are inverted under"),
        "image_embed": In("IMAGE_EMBED", optional=True, description="CLIP image embedding to invert under"),
        "steps": In("INT", default=50, min=2, max=1000, description="inversion steps; the Decoder reuses them"),
    }
    outputs = (Out("LATENT", "latent"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, images: torch.Tensor, text, image_embed,
            steps: int) -> tuple[Latent]:
        x0 = to_resolution(images.to(decoder.device), decoder.net.cfg.image_size)
        try:
            x_t, ts = S.invert(decoder, x0, Condition(text=text, image_embed=image_embed),
                               S.SamplerSettings(steps=steps), callback=progress_callback(ctx))
        except ConditionError as exc:
            raise as_input_error("text", exc) from None
        return (Latent(x_t, tuple(ts)),)


class Inpaint(Node):
    """Inpainting: regenerates the masked region (MASK = 1 where to paint) and keeps the rest exactly.

    method "model" needs the inpainting checkpoint (InpaintLoader; GLIDE); "repaint" works with any
    decoder by re-noising the known pixels every step (RePaint, with optional resampling jumps).
    """

    category = "sampling"
    inputs = {
        "decoder": In("DECODER", description="inpainting model (method model) or decoder (method repaint)"),
        "images": In("IMAGE", description="images to edit (resized to the model's resolution)"),
        "mask": In("MASK", description="1 where to generate, 0 where to keep"),
        "noise": In("NOISE", description="seed and batch size"),
        **CONDITION_INPUTS,
        "method": In("STRING", default="model", choices=("model", "repaint")),
        "jump_length": In("INT", default=10, min=1, max=100, description="RePaint jump length"),
        "resample": In("INT", default=1, min=1, max=20, description="RePaint resamplings per jump (1 = none)"),
        **SAMPLER_INPUTS,
    }
    outputs = (Out("IMAGE", "images"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, images: torch.Tensor, mask: torch.Tensor,
            noise: NoiseSpec, text, image_embed, guidance_scale: float, guidance: Guidance | None, method: str,
            jump_length: int, resample: int, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[torch.Tensor]:
        size = decoder.net.cfg.image_size
        image = to_resolution(images.to(decoder.device), size)
        paint = to_resolution(mask.to(decoder.device, image.dtype), size).round()
        b = max(image.shape[0], paint.shape[0], noise.batch)
        for name, t in (("images", image), ("mask", paint)):
            if t.shape[0] not in (1, b):
                raise InputValueError(name, f"batch {t.shape[0]} does not match batch {b}; use 1 or {b}")
        image, known = image.expand(b, -1, -1, -1), (1 - paint).expand(b, -1, -1, -1)
        g = build_guidance(text, image_embed, guidance_scale, guidance)
        try:
            out = S.inpaint(decoder, image, known, g, settings(sampler, steps, respacing, eta),
                            generator=noise.sampler_generator(decoder.device), callback=progress_callback(ctx),
                            method=method, jump_length=jump_length, n_resample=resample,
                            x_T=noise.initial((3, size, size), decoder.device).expand(b, -1, -1, -1))
        except ConditionError as exc:
            raise as_input_error("decoder" if "checkpoint" in str(exc) else "text", exc) from None
        return (out.clamp(-1, 1),)
