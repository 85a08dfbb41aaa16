"""Sampling nodes: Noise, Prior, Decoder, Upsample, DDIMInvert, NoiseImage, Inpaint, RePaint.

Each adapts its sockets to one function of `nodegraph.generate.sampling`, which owns the start state,
batching and resizing; progress is reported every step with an x̂0 preview, which is also where an
interrupt takes effect. Library errors name the input they blame, and the executor reports them there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import (
    DECODER,
    GUIDANCE,
    IMAGE,
    IMAGE_EMBED,
    INPAINT_MODEL,
    LATENT,
    MASK,
    NOISE,
    PRIOR,
    TEXT_EMBED,
    UPSAMPLER,
)
from nodegraph.nodes._common import CONDITION_INPUTS, SAMPLER_INPUTS, build_guidance, progress_callback, settings

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.generate.conditions import Guidance, Latent, NoiseSpec
    from nodegraph.models.clip import TextEncoding
    from nodegraph.models.diffusion_model import DiffusionModel

S = lazy_import("nodegraph.generate.sampling")
conditions = lazy_import("nodegraph.generate.conditions")


class Noise(Node):
    """A seeded starting noise and batch size; every sampler draws its x_T from it in its own shape."""

    category = "sampling"
    inputs = {
        "seed": In("INT", default=0, min=0, max=2**63 - 1, description="random seed"),
        "batch_size": In("INT", default=1, min=1, max=64, description="images per run"),
    }
    outputs = (Out(NOISE, "noise"),)

    def run(self, ctx: RunContext, seed: int, batch_size: int) -> tuple[NoiseSpec]:
        return (conditions.NoiseSpec(seed, batch_size),)


class Prior(Node):
    """DALL·E 2 prior: samples CLIP image embeddings for a caption (classifier-free guided, best of k)."""

    category = "sampling"
    inputs = {
        "prior": In(PRIOR),
        "text": In(TEXT_EMBED, description="the caption"),
        "noise": In(NOISE, description="seed and batch size"),
        "guidance_scale": In("FLOAT", default=2.0, min=0.0, max=50.0, step=0.5,
                             description="classifier-free guidance on x̂0 (1 = conditional)"),
        "best_of": In("INT", default=2, min=1, max=8, description="draw k embeddings, keep the closest to "
                      "the text (DALL·E 2 uses 2)"),
        "guidance": In(GUIDANCE, optional=True, description="composable guidance over several captions; "
                       "replaces guidance_scale when connected"),
        **{**SAMPLER_INPUTS, "steps": In("INT", default=25, min=1, max=1000, description="denoising steps")},
    }
    outputs = (Out(IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, prior: DiffusionModel, text: TextEncoding, noise: NoiseSpec,
            guidance_scale: float, best_of: int, guidance: Guidance | None, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[Tensor]:
        return (S.prior_from_noise(prior, conditions.Condition(text=text), noise, guidance_scale,
                                   settings(sampler, steps, respacing, eta), best_of=best_of, guidance=guidance,
                                   callback=progress_callback(ctx, preview=False)),)


class Decoder(Node):
    """Decoder (GLIDE / unCLIP): images from text, a CLIP image embedding, both, or nothing.

    Given a LATENT from DDIMInvert, it starts from that x_T and walks the same timesteps with DDIM:
    with eta 0 and the inversion's condition it reconstructs the image, with another condition it edits
    it; with eta > 0 it draws DALL·E 2 variations of the bipartite latent (image embedding, x_T), one per
    noise seed (connect a Noise node for the seed and the batch).
    """

    category = "sampling"
    inputs = {
        "decoder": In(DECODER),
        "noise": In(NOISE, optional=True, description="seed and batch size (or connect a latent)"),
        "latent": In(LATENT, optional=True, description="start from a DDIM-inverted x_T (DDIMInvert) or a "
                     "forward-noised image (NoiseImage)"),
        **CONDITION_INPUTS,
        **SAMPLER_INPUTS,
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, noise: NoiseSpec | None, latent: Latent | None,
            text, image_embed, guidance_scale: float, guidance: Guidance | None, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[Tensor]:
        return (S.decode(decoder, build_guidance(text, image_embed, guidance_scale, guidance),
                         settings(sampler, steps, respacing, eta), noise=noise, latent=latent,
                         callback=progress_callback(ctx)),)


class Upsample(Node):
    """Diffusion upsampler: 32×32 images to 64×64 (noise-augmented low-res conditioning)."""

    category = "sampling"
    inputs = {
        "upsampler": In(UPSAMPLER),
        "images": In(IMAGE, description="low-resolution images in [-1, 1]"),
        "noise": In(NOISE, optional=True, description="seed (batch comes from the images); default seed 0"),
        "aug_level": In("INT", default=-1, min=-1, max=999, description="noise level applied to the low-res "
                        "input; -1 = the level the checkpoint was evaluated with"),
        "guidance": In(GUIDANCE, optional=True, description="classifier / CLIP guidance terms"),
        **{**SAMPLER_INPUTS, "steps": In("INT", default=20, min=1, max=1000, description="denoising steps")},
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, upsampler: DiffusionModel, images: Tensor, noise: NoiseSpec | None,
            aug_level: int, guidance: Guidance | None, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[Tensor]:
        generator = ctx.generator(noise.seed if noise is not None else 0, upsampler.device)
        return (S.upsample(upsampler, images, settings(sampler, steps, respacing, eta), generator=generator,
                           callback=progress_callback(ctx), aug_level=None if aug_level < 0 else aug_level,
                           guidance=guidance),)


class DDIMInvert(Node):
    """DDIM inversion: the x_T that deterministic DDIM maps back to the given images (under a condition)."""

    category = "sampling"
    inputs = {
        "decoder": In(DECODER),
        "images": In(IMAGE, description="images to invert (resized to the decoder's resolution)"),
        "text": In(TEXT_EMBED, optional=True, description="caption the images are inverted under"),
        "image_embed": In(IMAGE_EMBED, optional=True, description="CLIP image embedding to invert under"),
        "steps": In("INT", default=50, min=2, max=1000, description="inversion steps; the Decoder reuses them"),
    }
    outputs = (Out(LATENT, "latent"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, images: Tensor, text, image_embed,
            steps: int) -> tuple[Latent]:
        x_T, timesteps = S.invert(decoder, images, conditions.Condition(text=text, image_embed=image_embed),
                                  S.SamplerSettings(steps=steps), callback=progress_callback(ctx))
        return (conditions.Latent(x_T, tuple(timesteps)),)


class NoiseImage(Node):
    """SDEdit's start: images noised forward to t0 = strength × T, as a LATENT the Decoder continues from
    (with any sampler) under a new caption or CLIP guidance; a lower strength keeps more of the image."""

    category = "sampling"
    inputs = {
        "decoder": In(DECODER, description="the model that will denoise it (its schedule and resolution)"),
        "images": In(IMAGE, description="images to edit (centre-cropped and resized to the decoder's resolution)"),
        "noise": In(NOISE, description="seed of the forward noise (and of the sampler's noise)"),
        "strength": In("FLOAT", default=0.6, min=0.05, max=1.0, step=0.05,
                       description="how far into the noise schedule to go: 0.05 barely changes the image, 1 "
                       "keeps nothing of it"),
        "steps": In("INT", default=50, min=1, max=1000, description="steps over the whole schedule (those below "
                    "t0 are walked)"),
    }
    outputs = (Out(LATENT, "latent"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, images: Tensor, noise: NoiseSpec, strength: float,
            steps: int) -> tuple[Latent]:
        return (S.noised_latent(decoder, images, strength, S.SamplerSettings(steps=steps), noise),)


_INPAINT_INPUTS = {
    "images": In(IMAGE, description="images to edit (resized to the model's resolution)"),
    "mask": In(MASK, description="1 where to generate, 0 where to keep"),
    "noise": In(NOISE, description="seed and batch size"),
    **CONDITION_INPUTS,
}


class Inpaint(Node):
    """GLIDE inpainting: regenerates the masked region (MASK = 1 where to paint) with an inpainting model,
    which sees the known pixels and the mask; the rest of the image is kept exactly."""

    category = "sampling"
    inputs = {"model": In(INPAINT_MODEL, description="an inpainting model (InpaintLoader)"), **_INPAINT_INPUTS,
              **SAMPLER_INPUTS}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, model: DiffusionModel, images: Tensor, mask: Tensor,
            noise: NoiseSpec, text, image_embed, guidance_scale: float, guidance: Guidance | None, sampler: str,
            steps: int, respacing: str, eta: float) -> tuple[Tensor]:
        return (S.inpaint_from_noise(model, images, mask, noise, build_guidance(text, image_embed, guidance_scale,
                                     guidance), settings(sampler, steps, respacing, eta), method="model",
                                     callback=progress_callback(ctx)),)


class RePaint(Node):
    """RePaint inpainting with any decoder: the known pixels are re-noised into x_t every step, with
    optional resampling jumps so the new region harmonises with them; the rest is kept exactly."""

    category = "sampling"
    inputs = {
        "decoder": In(DECODER),
        **_INPAINT_INPUTS,
        "jump_length": In("INT", default=10, min=1, max=100, description="steps per resampling jump"),
        "resample": In("INT", default=1, min=1, max=20, description="resamplings per jump (1 = none)"),
        **SAMPLER_INPUTS,
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, images: Tensor, mask: Tensor,
            noise: NoiseSpec, text, image_embed, guidance_scale: float, guidance: Guidance | None,
            jump_length: int, resample: int, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[Tensor]:
        return (S.inpaint_from_noise(decoder, images, mask, noise, build_guidance(text, image_embed,
                                     guidance_scale, guidance), settings(sampler, steps, respacing, eta),
                                     method="repaint", jump_length=jump_length, n_resample=resample,
                                     callback=progress_callback(ctx)),)
