"""Masks found from an image's own pixels, for editors that must leave part of an image alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import InputValueError


def object_mask(images: Tensor, threshold: float = 0.125, grow: int = 0) -> Tensor:
    """[B, 1, H, W]: 1 on what stands out from the background, 0 elsewhere. The background is taken to be the
    median colour of each image's one-pixel border (a scene on a plain ground, as Shapes World draws them); a pixel
    belongs to the object when any channel differs from it by more than `threshold` (on the 0..1 scale), and the
    object is then grown by `grow` pixels (a square neighbourhood) so that its anti-aliased edge counts as object."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputValueError("images", f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
    if min(images.shape[-2:]) < 3:
        raise InputValueError("images", f"images of {tuple(images.shape[-2:])} px have no border to read a "
                              "background from; give at least 3x3")
    if grow < 0:
        raise InputValueError("grow", f"grow must be 0 or more pixels, not {grow}")
    x = (images.float().clamp(-1, 1) + 1) / 2
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)  # [B, 3, P]
    ground = border.median(dim=-1).values[..., None, None]
    mask = ((x - ground).abs().amax(1, keepdim=True) > threshold).to(images.dtype)
    if grow:
        mask = F.max_pool2d(mask, 2 * grow + 1, stride=1, padding=grow)
    return mask
