"""Model loaders: one node per family, defaulting to the bundled Shapes World weights.

A loaded model is an ordinary node output, so the engine's cache keeps it resident across runs and
workflows; the file's size and modification time join the cache key, so a replaced file is reloaded.
"""

from __future__ import annotations

from typing import Any

from nodegraph import weights
from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import (
    CLASSIFIER,
    CLIP,
    DECODER,
    INPAINT_MODEL,
    NOISED_CLIP,
    PRIOR,
    UPSAMPLER,
)
from nodegraph.models.config import PRECISIONS

loader = lazy_import("nodegraph.models.loader")

_CHECKPOINT = In("STRING", default="", description="file inside the models directory; empty = the bundled model")


class _Loader(Node):
    """Shared by the loaders below: resolve the file, fingerprint it, load it onto the run's device."""

    category = "loaders"
    family = ""
    inputs = {"checkpoint": _CHECKPOINT}

    @classmethod
    def fingerprint(cls, ctx: RunContext, checkpoint: str | None = None, **_: Any) -> str:
        return "" if checkpoint is None else weights.fingerprint(weights.resolve(checkpoint, cls.family))

    def run(self, ctx: RunContext, checkpoint: str) -> tuple[Any]:
        return (loader.load(self.family, checkpoint, ctx.device),)


class CLIPLoader(_Loader):
    """Loads a CLIP (open_clip): the bundled Shapes World model, or a real checkpoint with its config name."""

    family = "clip"
    inputs = {
        "checkpoint": _CHECKPOINT,
        "config": In("STRING", default="", description="open_clip config name for a real checkpoint, e.g. "
                     "ViT-B-32; empty = the one named in the file (bundled: shapes-clip)"),
        "quick_gelu": In("BOOLEAN", default=False, description="true for OpenAI's original weights"),
    }
    outputs = (Out(CLIP, "clip"),)

    def run(self, ctx: RunContext, checkpoint: str, config: str, quick_gelu: bool) -> tuple[Any]:
        return (loader.load("clip", checkpoint, ctx.device, model_name=config or None, quick_gelu=quick_gelu),)


class _DiffusionLoader(_Loader):
    """A diffusion network: also offers reduced-precision weights."""

    inputs = {
        "checkpoint": _CHECKPOINT,
        "dtype": In("STRING", default="auto", choices=PRECISIONS,
                    description="auto: fp32, with the UNets' convolutions in bfloat16 where the CPU computes it "
                    "natively (AVX512-BF16 or AMX; about 1.8x faster convolutions, the main job 16-20% faster, "
                    "results the scorer cannot tell apart), plain fp32 elsewhere; fp32: as trained, bit for bit; "
                    "bf16: every weight and activation in bfloat16 (the sampler stays fp32)"),
    }

    def run(self, ctx: RunContext, checkpoint: str, dtype: str) -> tuple[Any]:
        # Freshly read and this node's alone: converted in place, without a copy of the weights.
        return (loader.load(self.family, checkpoint, ctx.device).with_precision(dtype, copy_weights=False),)


class _UNetLoader(_DiffusionLoader):
    """A UNet (decoder, inpainting decoder, upsampler): also offers its inference compiled."""

    inputs = {
        **_DiffusionLoader.inputs,
        "compile": In("BOOLEAN", default=False, description="compile the network's per-step work with torch.compile "
                      "for CPU inference: steps 1.4-1.6x faster once ~30 s of compiling per batch size is done (needs "
                      "a C++ compiler); pays off in a server or a batch of a few hundred prompts, not in one run"),
    }

    def run(self, ctx: RunContext, checkpoint: str, dtype: str, compile: bool = False) -> tuple[Any]:
        (model,) = super().run(ctx, checkpoint, dtype)
        return (model.compile_for_inference() if compile else model,)


class PriorLoader(_DiffusionLoader):
    """Loads a DALL·E 2 diffusion prior (text -> CLIP image embedding)."""

    family = "prior"
    outputs = (Out(PRIOR, "prior"),)


class DecoderLoader(_UNetLoader):
    """Loads a decoder (text- and image-embedding-conditioned, GLIDE / unCLIP)."""

    family = "decoder"
    outputs = (Out(DECODER, "decoder"),)


class InpaintLoader(_UNetLoader):
    """Loads the inpainting decoder (GLIDE-style: sees the known pixels and the mask)."""

    family = "inpaint"
    outputs = (Out(INPAINT_MODEL, "inpaint_model"),)


class UpsamplerLoader(_UNetLoader):
    """Loads a diffusion upsampler."""

    family = "upsampler"
    outputs = (Out(UPSAMPLER, "upsampler"),)


class ClassifierLoader(_Loader):
    """Loads the noisy classifier used for classifier guidance."""

    family = "classifier"
    outputs = (Out(CLASSIFIER, "classifier"),)


class NoisedCLIPLoader(_Loader):
    """Loads the noised CLIP image tower (GLIDE's CLIP guidance on x_t)."""

    family = "noised_clip"
    outputs = (Out(NOISED_CLIP, "noised_clip"),)
