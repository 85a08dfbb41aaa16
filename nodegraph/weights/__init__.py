"""Where model weights live: the one module that locates them, for the loaders, training and the benches.

The bundled Shapes World weights (fp16 safetensors, each with its card `FAMILY.md`) are package data in
this folder, so a wheel or a non-editable install runs from any working directory. `NODEGRAPH_MODELS`
names an override directory that replaces this one: checkpoint names resolve inside it, and training
exports into it.

A checkpoint is named relative to the models directory; an empty name means the family's default file.
Names that leave the directory (absolute paths, `..`, symlinks pointing out) are refused, so a workflow
from an untrusted client cannot make the engine read arbitrary files.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodegraph.errors import CheckpointError

BUNDLED_DIR = Path(__file__).resolve().parent
ENV_VAR = "NODEGRAPH_MODELS"

# family -> the file a loader opens when no checkpoint is named (and training exports to)
DEFAULT_FILES: dict[str, str] = {
    "clip": "clip.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder.safetensors",
    "inpaint": "inpaint.safetensors",
    "upsampler": "upsampler.safetensors",
    "classifier": "classifier.safetensors",
    "noised_clip": "noised_clip.safetensors",
}


def models_dir() -> Path:
    """The directory checkpoint names resolve in: $NODEGRAPH_MODELS, else the bundled weights."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else BUNDLED_DIR


def default_path(family: str) -> Path:
    """The family's default file in the models directory (it may not exist yet: training writes it)."""
    if family not in DEFAULT_FILES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(DEFAULT_FILES)}")
    return models_dir() / DEFAULT_FILES[family]


def resolve(name: str, family: str) -> Path:
    """The existing checkpoint file `name` names for a family ("" = the default), or CheckpointError."""
    base = models_dir().resolve()
    rel = name.strip() or DEFAULT_FILES[family]
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(
            f"checkpoint {name!r} must be a path inside the models directory {base} (no absolute paths or '..'); "
            f"copy the file there or set {ENV_VAR}"
        )
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise CheckpointError(f"checkpoint {name!r} resolves outside the models directory {base}")
    if not path.is_file():
        hint = "" if name.strip() else f"; train it with `python -m nodegraph.train {family}`"
        raise CheckpointError(f"no {family} checkpoint at {path}{hint}")
    return path


def fingerprint(path: Path) -> str:
    """Identity of a checkpoint file for a cache key: a replaced file must be reloaded."""
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def card_path(family: str) -> Path:
    """The model card beside a family's default weights."""
    return default_path(family).with_suffix(".md")
