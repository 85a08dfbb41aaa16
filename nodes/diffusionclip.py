"""DiffusionCLIP nodes: fine-tune a decoder toward a target caption, then edit any image with it.

Thin adapters over `nodegraph.generate.diffusionclip`. The fine-tuned decoder is an ordinary DECODER output,
so the engine caches it like a loaded model: editing new images with it trains nothing again. Fine-tuning
reports every iteration with a preview, which is also where an interrupt takes effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import CLIP_OBJECTIVE, DECODER, IMAGE, MASK, TEXT_EMBED
from nodegraph.errors import InputValueError
from nodegraph.nodes._common import optimisation_callback

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.generate.clip_objective import ClipObjective
    from nodegraph.models.clip import TextEncoding
    from nodegraph.models.diffusion_model import DiffusionModel

dclip = lazy_import("nodegraph.generate.diffusionclip")
conditions = lazy_import("nodegraph.generate.conditions")

_T0 = In("INT", default=400, min=1, max=100_000, description="the noise level images are inverted to and "
         "regenerated from (of the decoder's T = 1000): lower keeps more of the image")
_INVERT_STEPS = In("INT", default=20, min=1, max=1000, description="DDIM inversion steps from the image to t0")
_GENERATE_STEPS = In("INT", default=6, min=1, max=1000, description="DDIM steps from t0 back to the image "
                     "(use the fine-tuning's)")
_SEED = In("INT", default=0, min=0, max=2**63 - 1, description="seed of every random draw (batches, views, noise)")
CONDITIONS = ("none", "source", "target")
AS_FINE_TUNED = "as fine-tuned"
TUNED_UNDER = "diffusionclip_condition"  # meta key: the condition a fine-tuned decoder generates under
_EDIT_SOURCE = In(TEXT_EMBED, optional=True, description="the images' own caption: what they are inverted under "
                  "(conditions source and target) and generated under (source)")
_EDIT_TARGET = In(TEXT_EMBED, optional=True, description="the caption the images should get: what they are "
                  "generated under (condition target)")
_EDIT_CONDITION = In("STRING", default=AS_FINE_TUNED, choices=(AS_FINE_TUNED, *CONDITIONS), description="what the "
                     "fine-tuned decoder generates under: as it was fine-tuned (the fine-tuning node's condition; a "
                     "decoder from a loader: none), or none / source / target as on the fine-tuning node")
_GUIDANCE = In("FLOAT", default=1.0, min=0.0, max=50.0, step=0.5, description="classifier-free guidance of the "
               "fine-tuned decoder: the caption it generates under against its unconditional mode; 1 = none (other "
               "scales need a condition other than none). "
               "Measured in docs/editing.md: 1.5 makes more kind edits with models fine-tuned under the target "
               "caption")


def _condition(caption: TextEncoding | None):
    return None if caption is None else conditions.Condition(text=caption)


def _captions(condition: str, source: TextEncoding | None, target: TextEncoding | None):
    """(what the decoder generates under, what the images are inverted under) for a condition; one rule for
    fine-tuning and editing, so an edit retraces the chain its decoder was fine-tuned on."""
    return {"none": (None, None), "source": (source, source), "target": (target, source)}[condition]


def _edit_captions(condition: str, decoders: list[DiffusionModel], source, target, inverts: bool):
    """The edit nodes' captions: the condition resolved from the decoders when "as fine-tuned", and every
    caption it needs connected."""
    if condition == AS_FINE_TUNED:
        tuned = sorted({d.meta.get(TUNED_UNDER, "none") for d in decoders})
        if len(tuned) > 1:
            raise InputValueError("condition", f"the decoders were fine-tuned under different conditions "
                                  f"({', '.join(tuned)}); choose the one to edit under")
        condition = tuned[0]
    generate, invert = _captions(condition, source, target)
    needed = {"none": (), "source": ("source",), "target": ("target", "source") if inverts else ("target",)}
    what = {"source": "the caption the images have now", "target": "the caption they should get"}
    for name in needed[condition]:
        if {"source": source, "target": target}[name] is None:
            raise InputValueError(name, f"condition {condition!r} (the decoder generates under the {condition} "
                                  f"caption) needs `{name}` connected: {what[name]}")
    return generate, invert


def _inverted(original: DiffusionModel, images: Tensor, t0: int, steps: int, generate, invert):
    """x_t0 of the images under their own caption, when it differs from what the edit generates under."""
    if invert is None or invert is generate:
        return None
    return dclip.invert(original, images, t0, steps, _condition(invert))


class DiffusionCLIPFinetune(Node):
    """DiffusionCLIP: fine-tunes a copy of the decoder so that images regenerated from their DDIM inversions
    at t0 change as the target caption differs from the source caption (directional CLIP loss over caption
    templates, plus L1 to the source images). Output: the fine-tuned decoder, to edit any image with."""

    category = "edit"
    inputs = {
        "decoder": In(DECODER),
        "objective": In(CLIP_OBJECTIVE),
        "images": In(IMAGE, description="source images to fine-tune on (resized to the decoder's size)"),
        "source": In(TEXT_EMBED, description="caption of what the images show now"),
        "target": In(TEXT_EMBED, description="caption of what they should show"),
        "condition": In("STRING", default="none", choices=CONDITIONS, description="what the decoder generates "
                        "under: none = its unconditional mode; source = the source caption (edits then need the "
                        "image's caption); target = the target caption, from an inversion under the source "
                        "caption (edits need both). Measured in docs/editing.md: target makes the most colour, kind "
                        "and two-attribute edits and keeps the most (colour: from t0 750 at lr 1e-5, guided at 2)"),
        "variant": In("STRING", default="full", choices=("full", "efficient"), description="full: backprop "
                      "through the whole generative chain; efficient: an update per step on its x̂0 (the "
                      "paper's GPU-efficient variant)"),
        "t0": _T0,
        "invert_steps": _INVERT_STEPS,
        "generate_steps": In("INT", default=6, min=1, max=1000, description="DDIM steps of the generative chain"),
        "iterations": In("INT", default=20, min=1, max=10_000, description="fine-tuning iterations"),
        "batch": In("INT", default=4, min=1, max=256, description="source images per iteration"),
        "lr": In("FLOAT", default=1e-4, min=1e-7, max=0.1, description="Adam learning rate"),
        "clip_weight": In("FLOAT", default=1.0, min=0.0, max=100.0, description="weight of the directional loss"),
        "l1_weight": In("FLOAT", default=0.3, min=0.0, max=100.0, description="weight of |edit - source|"),
        "tv_weight": In("FLOAT", default=0.0, min=0.0, max=100.0, description="weight of the change's total "
                        "variation: keeps structure while allowing a region to be recoloured as a whole (with a "
                        "small l1_weight, for background edits: 1.0 with l1 0.1)"),
        "edit_region": In(MASK, optional=True, description="1 where the edit may change the source images (one "
                          "mask, or one per image); elsewhere their change is weighed by keep_weight: the shape "
                          "when the background changes, say. Unconnected: no such term"),
        "keep_weight": In("FLOAT", default=1.0, min=0.0, max=100.0, description="weight of the mean change outside "
                          "edit_region"),
        "uniform_weight": In("FLOAT", default=0.0, min=0.0, max=100.0, description="weight of the spread of the "
                             "change inside edit_region, for an edit that recolours the region as one (a "
                             "background): a shape grown into it, or specks, cost; 0 = no such term"),
        "grad_checkpoint": In("BOOLEAN", default=False, description="recompute activations in the backward pass "
                              "(full variant: less memory, more time)"),
        "seed": _SEED,
    }
    outputs = (Out(DECODER, "decoder"),)

    def run(self, ctx: RunContext, decoder: DiffusionModel, objective: ClipObjective, images: Tensor,
            source: TextEncoding, target: TextEncoding, condition: str, variant: str, t0: int,
            invert_steps: int, generate_steps: int, iterations: int, batch: int, lr: float, clip_weight: float,
            l1_weight: float, tv_weight: float, edit_region: Tensor | None, keep_weight: float,
            uniform_weight: float, grad_checkpoint: bool, seed: int) -> tuple[DiffusionModel]:
        settings = dclip.FinetuneSettings(t0=t0, invert_steps=invert_steps, generate_steps=generate_steps,
                                          iterations=iterations, batch=batch, lr=lr, clip_weight=clip_weight,
                                          l1_weight=l1_weight, tv_weight=tv_weight, keep_weight=keep_weight,
                                          uniform_weight=uniform_weight, variant=variant,
                                          grad_checkpoint=grad_checkpoint)
        generate_under, invert_under = _captions(condition, source, target)
        latents = _inverted(decoder, images, t0, invert_steps, generate_under, invert_under)
        keep = uniform = None
        if edit_region is not None:
            if edit_region.shape[0] not in (1, images.shape[0]):
                raise InputValueError("edit_region", f"{edit_region.shape[0]} masks for {images.shape[0]} images; "
                                      f"connect one mask or one per image")
            region = edit_region.expand(images.shape[0], -1, -1, -1)
            keep, uniform = 1 - region, (region if uniform_weight else None)
        tuned = dclip.finetune(decoder, objective, images, source, target, settings,
                               condition=_condition(generate_under), latents=latents, keep=keep, uniform=uniform,
                               generator=ctx.generator(seed, "cpu"), callback=optimisation_callback(ctx))
        tuned.meta[TUNED_UNDER] = condition  # edits of other images follow it ("as fine-tuned")
        return (tuned,)


class DiffusionCLIPEdit(Node):
    """Edits images with a DiffusionCLIP decoder: DDIM-inverts them to t0 with the original decoder (or, mode
    'noise', noises them forward: the unseen-domain mode) and regenerates them with the fine-tuned one."""

    category = "edit"
    inputs = {
        "original": In(DECODER, description="the decoder the fine-tuned one came from (inverts the images)"),
        "decoder": In(DECODER, description="the fine-tuned decoder"),
        "images": In(IMAGE, description="images to edit (resized to the decoder's size)"),
        "t0": _T0,
        "invert_steps": _INVERT_STEPS,
        "generate_steps": _GENERATE_STEPS,
        "mode": In("STRING", default="invert", choices=("invert", "noise"), description="invert: DDIM inversion "
                   "(keeps the image); noise: stochastic forward to t0 (images unlike the training data)"),
        "source": _EDIT_SOURCE,
        "target": _EDIT_TARGET,
        "condition": _EDIT_CONDITION,
        "edit_region": In(MASK, optional=True, description="makes the edit local: 1 where it shows; elsewhere the "
                          "image is kept, pixel for pixel, and the model fills the region to fit it (ObjectMask's "
                          "background for a background edit)"),
        "guidance_scale": _GUIDANCE,
        "seed": _SEED,
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, original: DiffusionModel, decoder: DiffusionModel, images: Tensor, t0: int,
            invert_steps: int, generate_steps: int, mode: str, source, target, condition: str,
            edit_region: Tensor | None, guidance_scale: float, seed: int) -> tuple[Tensor]:
        generate, invert = _edit_captions(condition, [decoder], source, target, inverts=mode == "invert")
        latents = _inverted(original, images, t0, invert_steps, generate, invert) if mode == "invert" else None
        return (dclip.edit(original, decoder, images, t0=t0, invert_steps=invert_steps,
                           generate_steps=generate_steps, condition=_condition(generate), latents=latents, mode=mode,
                           edit_region=edit_region, guidance_scale=guidance_scale,
                           generator=ctx.generator(seed, "cpu"),
                           callback=optimisation_callback(ctx)),)


def parse_schedule(text: str, n: int) -> list[tuple[float, float]] | None:
    """'1.0-0.5, 0.5-0.0' -> [(1.0, 0.5), (0.5, 0.0)]: one span of noise levels (fractions of T) per model."""
    if not text.strip():
        return None
    spans = []
    for part in text.split(","):
        try:
            high, low = (float(v) for v in part.split("-"))
        except ValueError:
            raise InputValueError("schedule", f"{part.strip()!r} is not a span HIGH-LOW of noise levels "
                                  "(fractions of T, e.g. 1.0-0.5)") from None
        if not 0.0 <= low <= high <= 1.0:
            raise InputValueError("schedule", f"span {part.strip()!r} must satisfy 0 <= LOW <= HIGH <= 1")
        spans.append((high, low))
    if len(spans) != n:
        raise InputValueError("schedule", f"{len(spans)} spans for {n} connected decoders; give one per decoder")
    return spans


class DiffusionCLIPMultiEdit(Node):
    """Multi-attribute DiffusionCLIP: at every step the noise predictions of several fine-tuned decoders are
    mixed, each counting over its span of noise levels (all of them equally when no schedule is given)."""

    category = "edit"
    inputs = {
        "original": In(DECODER, description="the decoder the fine-tuned ones came from (inverts the images)"),
        "decoder_1": In(DECODER),
        "decoder_2": In(DECODER),
        "decoder_3": In(DECODER, optional=True),
        "images": In(IMAGE, description="images to edit (resized to the decoder's size)"),
        "schedule": In("STRING", default="", description="one span HIGH-LOW of noise levels (fractions of T) "
                       "per decoder, comma-separated, e.g. '1.0-0.5, 0.5-0.0'; empty = all equally everywhere"),
        "t0": _T0,
        "invert_steps": _INVERT_STEPS,
        "generate_steps": _GENERATE_STEPS,
        "source": _EDIT_SOURCE,
        "target": In(TEXT_EMBED, optional=True, description="the caption the images should get, every "
                     "attribute changed: what they are generated under (condition target)"),
        "condition": _EDIT_CONDITION,
        "guidance_scale": _GUIDANCE,
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, original: DiffusionModel, decoder_1: DiffusionModel, decoder_2: DiffusionModel,
            decoder_3, images: Tensor, schedule: str, t0: int, invert_steps: int, generate_steps: int,
            source, target, condition: str, guidance_scale: float) -> tuple[Tensor]:
        models = [m for m in (decoder_1, decoder_2, decoder_3) if m is not None]
        generate, invert = _edit_captions(condition, models, source, target, inverts=True)
        return (dclip.edit(original, models, images, t0=t0, invert_steps=invert_steps, generate_steps=generate_steps,
                           condition=_condition(generate), schedule=parse_schedule(schedule, len(models)),
                           latents=_inverted(original, images, t0, invert_steps, generate, invert),
                           guidance_scale=guidance_scale, callback=optimisation_callback(ctx)),)
