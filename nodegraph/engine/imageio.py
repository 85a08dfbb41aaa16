"""Conversions between socket tensors and PIL images (the only place images change representation).

Socket conventions: IMAGE is a float tensor [B, C, H, W] in [-1, 1] (C = 3, or 1 for grey);
MASK is a float tensor [B, 1, H, W] in [0, 1] where 1 marks the region to repaint.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from nodegraph.engine.paths import write_new
from nodegraph.errors import InputValueError

PREVIEW_MAX_SIDE = 512


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] (or [C, H, W]) in [-1, 1] -> uint8 array [B, H, W, C]."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected an image tensor [B, C, H, W], got shape {tuple(images.shape)}")
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """One PIL image per batch item; 1 channel -> "L", 3 -> "RGB", 4 -> "RGBA"."""
    array = to_uint8(images)
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"cannot make an image from {channels} channels (need 1, 3 or 4)")
    if channels == 1:
        array = array[..., 0]
    return [Image.fromarray(item) for item in array]  # uint8 HxW / HxWx3 / HxWx4 -> L / RGB / RGBA


def from_pil(image: Image.Image, mode: str = "RGB") -> torch.Tensor:
    """A PIL image -> float tensor [1, C, H, W] in [-1, 1] (EXIF rotation applied)."""
    image = ImageOps.exif_transpose(image)
    array = np.asarray(image.convert(mode), dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor.float() / 127.5 - 1.0


MAX_IMAGE_PIXELS = 4096 * 4096  # 200 MB as a float tensor; larger files are refused before they are decoded


def read_image(path: Path, *, input_name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An image file as (IMAGE [1, 3, H, W] in [-1, 1], MASK from its transparency or None).

    Every way a file can be unusable is an InputValueError naming `input_name`: not an image, truncated,
    too many pixels (checked from the header, before decoding), or metadata that would inflate past Pillow's
    limits (a text or colour-profile chunk that decompresses to gigabytes).
    """
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise InputValueError(input_name, f"{path.name} is {width}x{height} pixels; at most {max_pixels} "
                                      f"are read ({int(max_pixels ** 0.5)}² or the same area): downscale it first")
            opened.load()
            return from_pil(opened, "RGB"), mask_from_alpha(opened)
    except InputValueError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            EOFError, struct.error, zlib.error) as exc:
        raise InputValueError(input_name, f"{path.name} is not a readable image: {exc}") from None


def mask_from_alpha(image: Image.Image) -> torch.Tensor | None:
    """[1, 1, H, W] in [0, 1], 1 where the image is transparent; None when it has no alpha."""
    image = ImageOps.exif_transpose(image)
    if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
        return None
    alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return torch.from_numpy(1.0 - alpha)[None, None]


def preview_image(preview: Any) -> Image.Image:
    """A small RGB PIL image for a progress preview, from a PIL image or an IMAGE tensor (first item)."""
    if isinstance(preview, torch.Tensor):
        batch = preview if preview.dim() == 4 else preview.unsqueeze(0)
        image = to_pil(batch[:1])[0]
    elif isinstance(preview, Image.Image):
        image = preview
    else:
        raise TypeError(f"a preview must be a PIL image or an image tensor, got {type(preview).__name__}")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image = image.copy()
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    return image.convert("RGB") if image.mode not in ("RGB", "L") else image


def save_png(image: Image.Image, path: Path, text: dict[str, str] | None = None) -> None:
    """Write a PNG with text chunks, whole or not at all, never over an existing file (FileExistsError, so
    callers pick a new name); see paths.write_new."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    write_new(path, lambda handle: image.save(handle, format="PNG", pnginfo=info, compress_level=4))


def png_text_key(key: object) -> bool:
    """Whether `key` can name a PNG text chunk (1-79 Latin-1 characters, no NUL)."""
    if not isinstance(key, str) or not 1 <= len(key) <= 79 or "\x00" in key:
        return False
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
