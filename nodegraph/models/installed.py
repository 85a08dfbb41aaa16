"""Loading the released checkpoints a user installed in the models folders, by the role they play.

`load_installed("glide_base", "base.pt", device)` finds the file through `nodegraph.weights` (the models
folders and extra_model_paths.yaml), loads it with `nodegraph.models.real.load_real` and checks that it is
the kind of model asked for, so a loader node gets a clear error for a wrong file ("upsample.pt holds a
GLIDE upsampler (glide_upsample); load it with GLIDEUpsamplerLoader"). Everything a user can get wrong is an
InputValueError naming the argument of the same name as the node input: `checkpoint`, `options`, `dtype`,
`vocab`, `clip_stats`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from nodegraph import weights
from nodegraph.errors import CheckpointError, InputValueError
from nodegraph.models.real import RealModel, load_real

DTYPES = ("auto", "fp32", "fp16", "bf16")
_DTYPE = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# kind -> (what it is, the node that loads it): for the wrong-file message
LOADERS = {
    "glide_base": ("GLIDE's 64x64 model", "GLIDELoader"),
    "glide_inpaint": ("GLIDE's inpainting model", "GLIDEInpaintLoader"),
    "glide_upsample": ("GLIDE's upsampler", "GLIDEUpsamplerLoader"),
    "glide_upsample_inpaint": ("GLIDE's inpainting upsampler", "GLIDEInpaintUpsamplerLoader"),
    "adm": ("a guided-diffusion UNet", "ADMLoader"),
    "adm_classifier": ("a guided-diffusion classifier", "ADMClassifierLoader"),
    "karlo_prior": ("Karlo's prior", "KarloPriorLoader"),
    "karlo_decoder": ("Karlo's decoder", "KarloDecoderLoader"),
    "karlo_sr": ("Karlo's super-resolution model", "KarloSuperResLoader"),
    "openai_clip": ("an OpenAI CLIP", "OpenAICLIPLoader"),
}


def parse_options(text: str) -> dict[str, Any]:
    """Config fields a file's shapes cannot tell, as `key=value` pairs separated by commas:
    "num_head_channels=64, use_new_attention_order=true, channel_mult=(1,2,3,4)". Values are JSON (numbers,
    true/false, lists; parentheses read as lists) or, failing that, plain strings."""
    text = text.strip()
    if not text:
        return {}
    options: dict[str, Any] = {}
    for part in re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", text):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputValueError("options", f"{part.strip()!r:.60} is not key=value; write e.g. "
                                  "'num_head_channels=64, use_new_attention_order=true'")
        raw = raw.strip()
        try:
            value = json.loads(raw.replace("(", "[").replace(")", "]"))
        except ValueError:
            value = raw
        options[key] = tuple(value) if isinstance(value, list) else value
    return options


def torch_dtype(dtype: str, device: torch.device | str) -> torch.dtype | None:
    """None for float32; "auto" is float16 on CUDA (the released models' use_fp16) and float32 elsewhere."""
    if dtype not in DTYPES:
        raise InputValueError("dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else None
    return _DTYPE[dtype]


def load_installed(
    kind: str,
    checkpoint: str,
    device: torch.device | str = "cpu",
    *,
    dtype: str = "auto",
    options: str = "",
    vocab: str | None = None,
    clip_stats: str | None = None,
) -> Any:
    """The installed file `checkpoint` of a model kind (see `weights.RELEASED`), loaded onto `device`.

    GLIDE UNets get their caption tokenizer from `vocab` (a folder under tokenizers/); Karlo's prior its CLIP
    statistics from `clip_stats` (a file under clip/). An OpenAI CLIP comes back as a `ClipModel` (float32:
    open_clip's towers take float32 inputs), everything else as a `RealModel`.
    """
    path = weights.find_released(kind, checkpoint)
    overrides = parse_options(options)
    stats = weights.find_released("karlo_clip_stats", clip_stats, input="clip_stats") if clip_stats else None
    try:
        if kind == "openai_clip":
            model = load_real(path, family="openai_clip", **overrides)
        else:
            model = load_real(path, dtype=torch_dtype(dtype, device), clip_stats=stats, **overrides)
    except CheckpointError as exc:
        if exc.input in ("config", "family"):  # the overrides came from the node's options string
            raise CheckpointError(exc.message, input="options") from None
        raise
    if model.kind != kind:
        have, loader = LOADERS.get(model.kind, (f"a {model.family} model", None))
        want = LOADERS[kind][0]
        hint = f"; load it with {loader}" if loader else ""
        raise CheckpointError(f"{path.name} holds {have} ({model.kind}), not {want}{hint}")
    if kind == "openai_clip":
        return model.net.to(device)
    if kind == "karlo_prior" and not model.net.has_stats:
        raise InputValueError("clip_stats", "Karlo's prior samples normalised embeddings; give its statistics "
                              "file (ViT-L-14_stats.th) in clip_stats")
    if model.family == "glide":
        model.tokenizer = _glide_tokenizer(vocab, model)
    return model.to(device)


def _glide_tokenizer(vocab: str | None, model: RealModel) -> Any:
    from nodegraph.models.glide_tokenizer import GlideTokenizer

    if not vocab:
        raise InputValueError("vocab", "GLIDE's UNets read captions with their own BPE vocabulary: name its folder")
    tokenizer = GlideTokenizer.from_folder(weights.find_released("glide_vocab", vocab, input="vocab"))
    if tokenizer.n_vocab > model.config.n_vocab:
        raise InputValueError("vocab", f"{vocab} has {tokenizer.n_vocab} tokens, more than the {model.config.n_vocab} "
                              f"this model's token table holds: it is not the vocabulary {Path(model.path).name} "
                              "was trained with")
    return tokenizer


__all__ = ["DTYPES", "LOADERS", "load_installed", "parse_options", "torch_dtype"]
