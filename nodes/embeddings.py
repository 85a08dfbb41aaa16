"""CLIP encoders and embedding arithmetic: TextEncode, CLIPImageEmbed, TextDiff, EmbedArithmetic, EmbedMix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import CLIP, IMAGE, IMAGE_EMBED, TEXT_EMBED
from nodegraph.errors import InputValueError

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.models.clip import ClipModel, TextEncoding

embeddings = lazy_import("nodegraph.generate.embeddings")


class TextEncode(Node):
    """Encodes a caption with CLIP: the pooled embedding and the per-token sequence the decoder attends to."""

    category = "conditioning"
    inputs = {
        "clip": In(CLIP),
        "text": In("STRING", default="", multiline=True, description="the caption; empty = the empty caption"),
    }
    outputs = (Out(TEXT_EMBED, "text"),)

    def run(self, ctx: RunContext, clip: ClipModel, text: str) -> tuple[TextEncoding]:
        return (clip.encode_caption(text),)


class CLIPImageEmbed(Node):
    """Embeds images with CLIP's image tower (unit norm): what unCLIP variations decode from."""

    category = "conditioning"
    inputs = {"clip": In(CLIP), "images": In(IMAGE, description="images in [-1, 1], any size")}
    outputs = (Out(IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, clip: ClipModel, images: Tensor) -> tuple[Tensor]:
        return (clip.embed_images(images),)


class TextDiff(Node):
    """DALL·E 2 text diff: the unit direction from one caption's CLIP embedding to another's."""

    category = "conditioning"
    inputs = {
        "source": In(TEXT_EMBED, description="caption of the current image"),
        "target": In(TEXT_EMBED, description="caption of the desired image"),
    }
    outputs = (Out(IMAGE_EMBED, "direction"),)

    def run(self, ctx: RunContext, source: TextEncoding, target: TextEncoding) -> tuple[Tensor]:
        return (embeddings.text_direction(source.embed, target.embed),)


class EmbedArithmetic(Node):
    """base − subtract + add, renormalised: e.g. an image's embedding moved by the difference between the
    prior's embeddings of two captions (a text diff with a definite endpoint). Several embeddings on
    subtract or add (a batch of prior samples) are averaged first, for a steadier difference."""

    category = "conditioning"
    inputs = {
        "base": In(IMAGE_EMBED, description="the embedding to move (its batch is kept)"),
        "subtract": In(IMAGE_EMBED, description="e.g. prior samples for the image's caption"),
        "add": In(IMAGE_EMBED, description="e.g. prior samples for the changed caption"),
        "weight": In("FLOAT", default=1.0, min=0.0, max=4.0, step=0.25, description="how much of the "
                     "difference to add (1 = all of it)"),
    }
    outputs = (Out(IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, base: Tensor, subtract: Tensor, add: Tensor,
            weight: float) -> tuple[Tensor]:
        for name, other in (("subtract", subtract), ("add", add)):
            if other.shape[-1] != base.shape[-1]:
                raise InputValueError(name, f"embedding widths differ ({other.shape[-1]} vs {base.shape[-1]}): "
                                      "use the same CLIP (and a prior trained on it) for all three")
        source = subtract.to(base.device).mean(0, keepdim=True)
        target = add.to(base.device).mean(0, keepdim=True)
        return (embeddings.analogy(base, source, target, weight),)


class EmbedMix(Node):
    """Interpolates embeddings (slerp or lerp): variations between images, or a text diff applied at
    several strengths θ (one embedding per θ in the output batch, θ-major)."""

    category = "conditioning"
    inputs = {
        "a": In(IMAGE_EMBED),
        "b": In(IMAGE_EMBED),
        "t_start": In("FLOAT", default=0.5, min=0.0, max=1.0, step=0.05, description="first θ"),
        "t_end": In("FLOAT", default=0.5, min=0.0, max=1.0, step=0.05, description="last θ"),
        "count": In("INT", default=1, min=1, max=32, description="number of θ evenly spaced from start to end"),
        "mode": In("STRING", default="slerp", choices=("slerp", "lerp")),
    }
    outputs = (Out(IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, a: Tensor, b: Tensor, t_start: float, t_end: float, count: int,
            mode: str) -> tuple[Tensor]:
        if a.shape[-1] != b.shape[-1]:
            raise InputValueError("b", f"embedding widths differ ({a.shape[-1]} vs {b.shape[-1]}): "
                                  "use the same CLIP for both")
        if a.shape[0] not in (1, b.shape[0]) and b.shape[0] != 1:
            raise InputValueError("b", f"batches {a.shape[0]} and {b.shape[0]} do not match; use 1 or equal")
        ts = [t_start] if count == 1 else [t_start + (t_end - t_start) * i / (count - 1) for i in range(count)]
        return (embeddings.interpolate(a, b.to(a.device), ts, mode),)
