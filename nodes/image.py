"""Image file nodes: LoadImage (from the input directory) and SaveImage (PNG, into the output directory)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.paths import confine, next_number, output_target
from nodegraph.engine.sockets import IMAGE, MASK
from nodegraph.errors import InputValueError
from nodegraph.world import examples

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")
imageio = lazy_import("nodegraph.engine.imageio")  # PIL, numpy and torch: run time only


class LoadImage(Node):
    """Loads an image file (PNG, JPEG, ... of any size) from the input directory as IMAGE, and a MASK from
    its alpha channel; `example:NAME` reads one of the example renders shipped with nodegraph instead.

    Models bring the image to their resolution by one rule: centre-crop to a square, then resize
    (nodegraph.models.resize). The mask is 1 where the image is transparent (the region to repaint) and all
    zeros when the file has no alpha channel. The file's content hash joins the cache key, so editing the
    file reloads it even though its name did not change.
    """

    category = "image"
    inputs = {"image": In("STRING", description="image file, relative to the input directory, or "
                          f"{examples.PREFIX}NAME for a shipped example ({', '.join(examples.EXAMPLES)})")}
    outputs = (Out(IMAGE, "image"), Out(MASK, "mask"))

    @classmethod
    def fingerprint(cls, ctx: RunContext, image: str | None = None) -> str | None:
        if image is None:
            return None  # the name arrives over a link: the file cannot be hashed before the run, so never reuse
        digest = hashlib.sha256()
        with _image_path(ctx, image).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def run(self, ctx: RunContext, image: str) -> tuple[Tensor, Tensor]:
        pixels, mask = imageio.read_image(_image_path(ctx, image))
        if mask is None:
            mask = torch.zeros(1, 1, pixels.shape[2], pixels.shape[3])
        return pixels.to(ctx.device), mask.to(ctx.device)


NAME_TAIL = "_00001_.png"  # what follows the prefix: PREFIX_00001_.png, as ComfyUI names its files


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

    @classmethod
    def fingerprint(cls, ctx: RunContext, filename_prefix: str | None = None, **_: object) -> str:
        # Not for the cache key: the output location is checked here, before any node of the run starts.
        if filename_prefix is not None:
            output_target(ctx.output_dir, filename_prefix, NAME_TAIL, input_name="filename_prefix")
        return ""

    def run(self, ctx: RunContext, images: Tensor, filename_prefix: str) -> tuple[()]:
        directory, prefix = output_target(ctx.output_dir, filename_prefix, NAME_TAIL, input_name="filename_prefix")
        directory.mkdir(parents=True, exist_ok=True)
        # A symlink may have appeared while creating the folders; check the real location again.
        confine(
            ctx.output_dir,
            str(directory.relative_to(ctx.output_dir.resolve()) / prefix),
            input_name="filename_prefix",
        )
        text = {key: json.dumps(value, default=str)
                for key, value in ctx.extra_pnginfo.items() if imageio.png_text_key(key)}
        text.update(prompt=json.dumps(ctx.workflow, default=str), params=json.dumps(dict(ctx.params), default=str))
        counter = next_number(directory, prefix)
        written = []
        for picture in imageio.to_pil(images):
            while True:
                path = directory / f"{prefix}_{counter:05}_.png"
                counter += 1
                try:
                    imageio.save_png(picture, path, text)
                except FileExistsError:
                    continue
                break
            written.append(ctx.add_file(path))
        ctx.record(images=written)
        return ()


class SaveImageWebsocket(Node):
    """Sends each image of the batch to the client that queued the run, as a binary websocket frame (PNG),
    instead of writing a file; as ComfyUI's SaveImageWebsocket. Nothing is saved on the server."""

    category = "image"
    output_node = True
    inputs = {"images": In(IMAGE, description="images [B, C, H, W] in [-1, 1]")}

    def run(self, ctx: RunContext, images: Tensor) -> tuple[()]:
        pictures = imageio.to_pil(images)
        for picture in pictures:
            ctx.send_image(picture)
        ctx.record(sent=len(pictures))
        return ()


def _image_path(ctx: RunContext, image: str) -> Path:
    if image.startswith(examples.PREFIX):
        name = image[len(examples.PREFIX):]
        if name not in examples.EXAMPLES:
            raise InputValueError("image", f"no shipped example {name!r}; there are "
                                  f"{', '.join(examples.PREFIX + known for known in examples.EXAMPLES)}")
        return examples.EXAMPLES_DIR / name
    return ctx.input_path(image, "image")
