"""Guidance nodes: composable classifier-free guidance, classifier guidance and CLIP guidance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import (
    CLASSIFIER,
    CLASSIFIER_GUIDANCE,
    CLIP,
    CLIP_GUIDANCE,
    GUIDANCE,
    IMAGE_EMBED,
    NOISED_CLIP,
    TEXT_EMBED,
)
from nodegraph.errors import InputValueError

if TYPE_CHECKING:
    from nodegraph.generate.conditions import ClassifierTerm, ClipTerm, Guidance
    from nodegraph.models.clip import TextEncoding

conditions = lazy_import("nodegraph.generate.conditions")

TERMS = 4


def _term_inputs() -> dict[str, In]:
    inputs: dict[str, In] = {}
    for i in range(1, TERMS + 1):
        inputs[f"text_{i}"] = In(TEXT_EMBED, optional=True, description=f"caption of term {i}")
        inputs[f"image_embed_{i}"] = In(IMAGE_EMBED, optional=True, description=f"image embedding of term {i}")
        inputs[f"weight_{i}"] = In("FLOAT", default=3.0, min=-50.0, max=50.0, step=0.5,
                                   description=f"guidance weight s_{i} (negative pushes away)")
    return inputs


class GuidanceCombine(Node):
    """Builds GUIDANCE: ε = ε_∅ + Σ s_i (ε_i − ε_∅) over up to four weighted conditions (composable
    diffusion), all evaluated in one batched forward, plus optional classifier and CLIP terms."""

    category = "guidance"
    inputs = {
        **_term_inputs(),
        "classifier": In(CLASSIFIER_GUIDANCE, optional=True),
        "clip": In(CLIP_GUIDANCE, optional=True),
    }
    outputs = (Out(GUIDANCE, "guidance"),)

    def run(self, ctx: RunContext, classifier: ClassifierTerm | None, clip: ClipTerm | None,
            **terms) -> tuple[Guidance]:
        weighted = []
        for i in range(1, TERMS + 1):
            cond = conditions.Condition(text=terms[f"text_{i}"], image_embed=terms[f"image_embed_{i}"])
            if not cond.is_null:
                weighted.append((cond, float(terms[f"weight_{i}"])))
        if not weighted and classifier is None and clip is None:
            raise InputValueError(None, "nothing to guide with: connect a text or image embedding to a term, "
                                  "or a classifier / CLIP guidance")
        return (conditions.Guidance(conditions=tuple(weighted), classifier=classifier, clip=clip),)


class EditGuidance(Node):
    """GUIDANCE for decoding an inverted latent under a changed condition: ε(target) + s·(ε(target) −
    ε(source)). Unlike CFG it keeps the inversion exact where target equals source (θ = 0 of a text diff,
    or an unchanged prompt), and amplifies only what the edit changes; s = 0 is the plain conditional
    decode. Source is the condition the latent was inverted under."""

    category = "guidance"
    inputs = {
        "target_text": In(TEXT_EMBED, optional=True, description="caption to decode under"),
        "target_image_embed": In(IMAGE_EMBED, optional=True, description="image embedding to decode under "
                                 "(e.g. the text-diff mix)"),
        "source_text": In(TEXT_EMBED, optional=True, description="caption the latent was inverted under"),
        "source_image_embed": In(IMAGE_EMBED, optional=True, description="image embedding the latent was "
                                 "inverted under"),
        "strength": In("FLOAT", default=1.0, min=0.0, max=20.0, step=0.25,
                       description="how far past the target, away from the source, to push (0 = no push)"),
    }
    outputs = (Out(GUIDANCE, "guidance"),)

    def run(self, ctx: RunContext, target_text, target_image_embed, source_text, source_image_embed,
            strength: float) -> tuple[Guidance]:
        target = conditions.Condition(text=target_text, image_embed=target_image_embed)
        source = conditions.Condition(text=source_text, image_embed=source_image_embed)
        if target.is_null:
            raise InputValueError("target_text", "connect the target text or image embedding to decode under")
        if source.is_null:
            raise InputValueError("source_text", "connect the text or image embedding the latent was inverted "
                                  "under (DDIMInvert's condition)")
        return (conditions.Guidance.edit(target, source, strength),)


class ClassifierGuidance(Node):
    """Classifier guidance (Dhariwal & Nichol) toward the attributes a caption names, e.g. 'a red circle'."""

    category = "guidance"
    inputs = {
        "classifier": In(CLASSIFIER),
        "caption": In("STRING", default="a red circle", description="one shape: colour, kind, size, position, "
                      "background (what it names is what is guided)"),
        "scale": In("FLOAT", default=2.0, min=0.0, max=100.0, step=0.5, description="gradient scale s"),
    }
    outputs = (Out(CLASSIFIER_GUIDANCE, "classifier_guidance"),)

    def run(self, ctx: RunContext, classifier, caption: str, scale: float) -> tuple[ClassifierTerm]:
        return (conditions.ClassifierTerm.toward(classifier, caption, scale),)


class CLIPGuidance(Node):
    """CLIP guidance toward a caption: mode x0 (CLIP on x̂0 blends with cutouts, Crowson) or noised
    (a noise-aware image tower on x_t, GLIDE)."""

    category = "guidance"
    inputs = {
        "text": In(TEXT_EMBED, description="caption to steer toward"),
        "mode": In("STRING", default="noised", choices=("noised", "x0")),
        "clip": In(CLIP, optional=True, description="CLIP for mode x0"),
        "noised_clip": In(NOISED_CLIP, optional=True, description="noised image tower for mode noised"),
        "scale": In("FLOAT", default=100.0, min=0.0, max=10000.0, step=10.0, description="gradient scale"),
        "cutn": In("INT", default=8, min=1, max=64, description="random cutouts per step (mode x0)"),
        "tv_scale": In("FLOAT", default=0.0, min=0.0, max=10000.0, description="total-variation loss (mode x0)"),
        "range_scale": In("FLOAT", default=0.0, min=0.0, max=10000.0, description="range loss (mode x0)"),
        "grad_clamp": In("FLOAT", default=0.0, min=0.0, max=1000.0, description="clamp the gradient's RMS "
                         "(mode x0); 0 = off"),
    }
    outputs = (Out(CLIP_GUIDANCE, "clip_guidance"),)

    def run(self, ctx: RunContext, text: TextEncoding, mode: str, clip, noised_clip, scale: float, cutn: int,
            tv_scale: float, range_scale: float, grad_clamp: float) -> tuple[ClipTerm]:
        encoder = clip if mode == "x0" else noised_clip
        if encoder is None:
            needed = "clip (a CLIPLoader)" if mode == "x0" else "noised_clip (a NoisedCLIPLoader)"
            raise InputValueError("mode", f"mode {mode!r} needs {needed} connected")
        return (conditions.ClipTerm(mode, encoder, text.embed, scale, cutn, tv_scale, range_scale, grad_clamp or None),)
