"""Input declarations and adapters shared by the sampling nodes (not itself a node module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In
from nodegraph.engine.sockets import GUIDANCE, IMAGE_EMBED, TEXT_EMBED
from nodegraph.errors import InputValueError

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.generate.conditions import Guidance
    from nodegraph.generate.sampling import SamplerSettings

conditions = lazy_import("nodegraph.generate.conditions")
sampling = lazy_import("nodegraph.generate.sampling")

SAMPLER_INPUTS: dict[str, In] = {
    "sampler": In("STRING", default="ddim", choices=("ddim", "ddpm", "dpmpp_2m"),
                  description="ddim (eta below), ancestral ddpm, or DPM-Solver++(2M) for few steps"),
    "steps": In("INT", default=50, min=1, max=1000, description="number of denoising steps"),
    "respacing": In("STRING", default="", description="ADM respacing, e.g. '10,10,3,2,2' or 'ddim25'; "
                    "overrides steps when set"),
    "eta": In("FLOAT", default=0.0, min=0.0, max=1.0, step=0.05, description="DDIM stochasticity (0 = deterministic)"),
}

CONDITION_INPUTS: dict[str, In] = {
    "text": In(TEXT_EMBED, optional=True, description="caption (GLIDE mode)"),
    "image_embed": In(IMAGE_EMBED, optional=True, description="CLIP image embedding (unCLIP mode)"),
    "guidance_scale": In("FLOAT", default=3.0, min=0.0, max=50.0, step=0.5,
                         description="classifier-free guidance scale (1 = conditional model, 0 = unconditional)"),
    "guidance": In(GUIDANCE, optional=True, description="composable guidance; replaces text, image_embed "
                   "and guidance_scale when connected"),
}


def settings(sampler: str, steps: int, respacing: str, eta: float) -> SamplerSettings:
    return sampling.SamplerSettings(sampler=sampler, steps=steps, respacing=respacing.strip(), eta=eta)


def build_guidance(text, image_embed, guidance_scale: float, guidance: Guidance | None) -> Guidance:
    """The node's guidance: the GUIDANCE input if connected, else CFG on the text / image embedding."""
    if guidance is not None:
        if text is not None or image_embed is not None:
            raise InputValueError("guidance", "connect either guidance or text/image_embed, not both: "
                                  "put the text into the GuidanceCombine node instead")
        return guidance
    cond = conditions.Condition(text=text, image_embed=image_embed)
    if cond.is_null:
        return conditions.Guidance()  # unconditional sampling
    return conditions.Guidance.cfg(cond, guidance_scale)


def progress_callback(ctx: RunContext, preview: bool = True) -> Callable:
    """Sampler callback: one progress event per step with the x̂0 preview (also the interrupt point)."""

    def callback(step: int, total: int, x: Tensor, x0: Tensor) -> None:
        ctx.progress(step, total, preview=x0.clamp(-1, 1) if preview else None)

    return callback


def optimisation_callback(ctx: RunContext) -> Callable:
    """Callback of the optimisation loops (inversion, StyleCLIP, NADA, DiffusionCLIP): one progress event per
    step with the current images as the preview (also the interrupt point)."""

    def callback(step: int, total: int, preview: Tensor) -> None:
        ctx.progress(step, total, preview=preview)

    return callback
