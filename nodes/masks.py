"""Masks for inpainting and local edits. MASK sockets hold [B, 1, H, W] floats in [0, 1], 1 = the region to
generate or edit (as LoadImage reads it from transparency, and as ComfyUI does)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import IMAGE, MASK
from nodegraph.errors import InputValueError

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")
masks = lazy_import("nodegraph.generate.masks")


class MaskFromRect(Node):
    """A rectangular mask: 1 inside the rectangle (to generate), 0 outside."""

    category = "mask"
    inputs = {
        "width": In("INT", default=32, min=1, max=4096, description="mask width in pixels"),
        "height": In("INT", default=32, min=1, max=4096, description="mask height in pixels"),
        "x": In("INT", default=8, min=0, max=4096, description="left edge of the rectangle"),
        "y": In("INT", default=8, min=0, max=4096, description="top edge of the rectangle"),
        "w": In("INT", default=16, min=1, max=4096, description="rectangle width"),
        "h": In("INT", default=16, min=1, max=4096, description="rectangle height"),
    }
    outputs = (Out(MASK, "mask"),)

    def run(self, ctx: RunContext, width: int, height: int, x: int, y: int, w: int, h: int) -> tuple[Tensor]:
        if x >= width or y >= height:
            raise InputValueError("x" if x >= width else "y", f"the rectangle starts at ({x}, {y}), outside the "
                                  f"{width}x{height} mask")
        mask = torch.zeros(1, 1, height, width, device=ctx.device)
        mask[..., y : y + h, x : x + w] = 1.0
        return (mask,)


class MaskFromImage(Node):
    """A mask from an image channel (or luminance): 1 where it is brighter than the threshold."""

    category = "mask"
    inputs = {
        "images": In(IMAGE, description="images in [-1, 1]"),
        "channel": In("STRING", default="luminance", choices=("luminance", "red", "green", "blue")),
        "threshold": In("FLOAT", default=0.5, min=0.0, max=1.0, step=0.05, description="on the 0..1 scale"),
    }
    outputs = (Out(MASK, "mask"),)

    def run(self, ctx: RunContext, images: Tensor, channel: str, threshold: float) -> tuple[Tensor]:
        x = (images + 1) / 2
        if channel == "luminance":
            v = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        else:
            v = x[:, ("red", "green", "blue").index(channel)][:, None]
        return ((v > threshold).to(images.dtype),)


class InvertMask(Node):
    """1 − mask: swaps the region to generate and the region to keep."""

    category = "mask"
    inputs = {"mask": In(MASK)}
    outputs = (Out(MASK, "mask"),)

    def run(self, ctx: RunContext, mask: Tensor) -> tuple[Tensor]:
        return (1 - mask,)


class ObjectMask(Node):
    """A mask found from the image itself: the object (what differs from the median colour of the image's border,
    the plain ground of a Shapes World scene), grown a little, or the background around it. For editors that must
    leave part of an image alone (StyleGANBlendRender's edit_region: the background, for a background edit that
    must keep the shape)."""

    category = "mask"
    inputs = {
        "images": In(IMAGE, description="images in [-1, 1] on a plain ground (e.g. a GAN reconstruction)"),
        "region": In("STRING", default="object", choices=("object", "background", "all"),
                     description="what is 1: the object (grown), everything else, or all of the image (nothing "
                     "kept: a switch for workflows)"),
        "threshold": In("FLOAT", default=0.125, min=0.0, max=1.0, step=0.005, description="a pixel is object when "
                        "a channel differs from the ground's colour by more than this (0..1 scale)"),
        "grow": In("INT", default=1, min=0, max=64, description="pixels the object is grown by (its anti-aliased "
                   "edge is object, not background)"),
    }
    outputs = (Out(MASK, "mask"),)

    def run(self, ctx: RunContext, images: Tensor, region: str, threshold: float, grow: int) -> tuple[Tensor]:
        found = masks.object_mask(images, threshold, grow)
        return ({"object": found, "background": 1 - found, "all": torch.ones_like(found)}[region],)
