"""Shapes World nodes: render a scene from its caption, and score images against a caption."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import IMAGE
from nodegraph.errors import InputValueError

if TYPE_CHECKING:
    from torch import Tensor

captions = lazy_import("nodegraph.world.captions")
render = lazy_import("nodegraph.world.render")
scene = lazy_import("nodegraph.world.scene")
scorer = lazy_import("nodegraph.world.scorer")


class RenderScene(Node):
    """Renders the Shapes World scene a canonical caption describes (size defaults to large, position to
    the center, or left/right for two shapes): test images without any input file."""

    category = "world"
    inputs = {
        "caption": In("STRING", default="a large red circle in the center on a blue background", multiline=True),
        "resolution": In("INT", default=64, choices=(32, 64, 128)),
    }
    outputs = (Out(IMAGE, "image"),)

    def run(self, ctx: RunContext, caption: str, resolution: int) -> tuple[Tensor]:
        try:
            spec = captions.parse_prompt(caption)
        except ValueError as exc:
            raise InputValueError("caption", str(exc)) from None
        if spec.background is None:
            raise InputValueError("caption", "name the background, e.g. '... on a blue background'")
        default_pos = ["center"] if len(spec.shapes) == 1 else list(scene.PAIRS[0])
        shapes = tuple(scene.Shape(s.kind, s.color, s.size or "large", s.position or default_pos[i])
                       for i, s in enumerate(spec.shapes))
        if any(s.color == spec.background for s in shapes):
            raise InputValueError("caption", "a shape's colour must differ from the background's")
        image = render.to_model_range(render.render([scene.Scene(spec.background, shapes)], resolution))
        return (image.to(ctx.device),)


class ScoreImage(Node):
    """Scores images against a caption with the Shapes World scorer: records per-attribute results and
    outputs the attribute accuracy (fraction of named attributes right, over the batch)."""

    category = "world"
    output_node = True
    inputs = {
        "images": In(IMAGE),
        "caption": In("STRING", default="", multiline=True, description="the caption the images should show"),
    }
    outputs = (Out("FLOAT", "accuracy"),)

    def run(self, ctx: RunContext, images: Tensor, caption: str) -> tuple[float]:
        try:
            captions.parse_prompt(caption)
        except ValueError as exc:
            raise InputValueError("caption", str(exc)) from None
        report = scorer.score_batch(images.detach().float().cpu().clamp(-1, 1), [caption] * images.shape[0])
        ctx.record(attribute_accuracy=report.attribute_accuracy, exact_rate=report.exact_rate,
                   per_attribute={k: v for k, v in report.per_attribute.items() if v == v})
        return (report.attribute_accuracy,)
