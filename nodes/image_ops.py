"""Image plumbing: resize and batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import IMAGE
from nodegraph.errors import InputValueError


class ImageScale(Node):
    """Resizes images to a square size (area filter when shrinking, bilinear when growing)."""

    category = "image"
    inputs = {"images": In(IMAGE), "size": In("INT", default=64, min=8, max=1024)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, images: torch.Tensor, size: int) -> tuple[torch.Tensor]:
        mode = "area" if images.shape[-1] > size else "bilinear"
        return (F.interpolate(images, size=(size, size), mode=mode).clamp(-1, 1),)


class ImageBatch(Node):
    """Concatenates two image batches (resized to the first one's size) into one."""

    category = "image"
    inputs = {"a": In(IMAGE), "b": In(IMAGE)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        if a.shape[1] != b.shape[1]:
            raise InputValueError("b", f"{b.shape[1]} channels vs {a.shape[1]}")
        if b.shape[-2:] != a.shape[-2:]:
            b = F.interpolate(b, size=a.shape[-2:], mode="bilinear")
        return (torch.cat([a, b.to(a.device)]),)
