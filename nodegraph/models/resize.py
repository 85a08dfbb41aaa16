"""How an image of any size and shape is brought to a model's square resolution: the one rule every model
input follows (decoders, inpainting and upsampler inputs, masks, CLIP's image tower).

First a centre crop to a square (the longer side loses equal parts at both ends), then a resize to the
model's side: area averaging when shrinking (Shapes World's 32-px images are its 64-px renders averaged
2x2) and bilinear when growing. CLIP keeps its own antialiased filter for the resize, after the same crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_crop(images: torch.Tensor) -> torch.Tensor:
    """The largest centred square of [..., H, W] images."""
    h, w = images.shape[-2:]
    if h == w:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


def fit_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] images (or masks) centre-cropped to a square and resized to size x size."""
    images = center_crop(images)
    if images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
