"""Image file nodes: LoadImage (from the input directory) and SaveImage (PNG, into the output directory)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from nodegraph.engine.context import RunContext
from nodegraph.engine.imageio import from_pil, mask_from_alpha, png_text_key, save_png, to_pil
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.paths import confine
from nodegraph.engine.sockets import IMAGE, MASK
from nodegraph.errors import InputValueError


class LoadImage(Node):
    """Loads an image file from the input directory as IMAGE, and a MASK from its alpha channel.

    The mask is 1 where the image is transparent (the region to repaint) and all zeros when the
    file has no alpha channel. The file's content hash joins the cache key, so editing the file
    reloads it even though its name did not change.
    """

    category = "image"
    inputs = {"image": In("STRING", description="image file, relative to the input directory")}
    outputs = (Out(IMAGE, "image"), Out(MASK, "mask"))

    @classmethod
    def fingerprint(cls, ctx: RunContext, image: str | None = None) -> str:
        if image is None:
            return ""  # linked from another node: its value is not known before the run
        digest = hashlib.sha256()
        with ctx.input_path(image, "image").open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def run(self, ctx: RunContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = ctx.input_path(image, "image")
        try:
            with Image.open(path) as opened:
                opened.load()
                pixels = from_pil(opened, "RGB")
                mask = mask_from_alpha(opened)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
            raise InputValueError("image", f"{image!r} is not a readable image: {exc}") from None
        if mask is None:
            mask = torch.zeros(1, 1, pixels.shape[2], pixels.shape[3])
        return pixels.to(ctx.device), mask.to(ctx.device)


class SaveImage(Node):
    """Saves each image of the batch as PREFIX_00001_.png, never overwriting an existing file; each file
    appears whole or not at all.

    The PNG carries the run's API-format workflow ("prompt" text chunk, as ComfyUI writes it), its param
    values ("params") and whatever the client sent as extra_pnginfo (ComfyUI's UI-format "workflow"), so
    any saved image can be reproduced, and dropped onto ComfyUI's canvas to get its graph back.
    """

    category = "image"
    output_node = True
    inputs = {
        "images": In(IMAGE, description="images [B, C, H, W] in [-1, 1]"),
        "filename_prefix": In(
            "STRING",
            default="nodegraph",
            description="file name prefix; may include subfolders of the output directory",
        ),
    }

    def run(self, ctx: RunContext, images: torch.Tensor, filename_prefix: str) -> tuple[()]:
        target = confine(ctx.output_dir, filename_prefix, input_name="filename_prefix")
        directory, prefix = target.parent, target.name
        directory.mkdir(parents=True, exist_ok=True)
        # A symlink may have appeared while creating the folders; check the real location again.
        confine(
            ctx.output_dir,
            str(directory.relative_to(ctx.output_dir.resolve()) / prefix),
            input_name="filename_prefix",
        )
        text = {key: json.dumps(value, default=str) for key, value in ctx.extra_pnginfo.items() if png_text_key(key)}
        text.update(prompt=json.dumps(ctx.workflow, default=str), params=json.dumps(dict(ctx.params), default=str))
        counter = _next_counter(directory, prefix)
        written = []
        for picture in to_pil(images):
            while True:
                path = directory / f"{prefix}_{counter:05}_.png"
                counter += 1
                try:
                    save_png(picture, path, text)
                except FileExistsError:
                    continue
                break
            written.append(ctx.add_file(path))
        ctx.record(images=written)
        return ()


def _next_counter(directory: Path, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"_(\d{5,})_\.png")
    highest = 0
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1
