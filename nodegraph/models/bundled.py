"""Where checkpoints are found, and one loader per model family.

The bundled weights live in the repository's `models/` directory (override with NODEGRAPH_MODELS).
A checkpoint is named relative to that directory; an empty name means the bundled default.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nodegraph.models.checkpoint import CheckpointError, check_compatible, load_state_dict, read_metadata
from nodegraph.models.clip import ClipModel, load_clip
from nodegraph.models.diffusion_model import DiffusionModel, load_diffusion_model

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, str] = {
    "clip": "clip.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder.safetensors",
    "inpaint": "inpaint.safetensors",
    "upsampler": "upsampler.safetensors",
    "classifier": "classifier.safetensors",
    "noised_clip": "noised_clip.safetensors",
}


def models_dir() -> Path:
    return Path(os.environ.get("NODEGRAPH_MODELS", REPO_ROOT / "models"))


def resolve(name: str, family: str) -> Path:
    """The checkpoint file for `name` (relative to the models directory; "" = bundled default).

    Paths that leave the models directory (`..`, absolute paths, symlinks pointing out) are refused, so a
    workflow from an untrusted client cannot make the engine read arbitrary files.
    """
    base = models_dir().resolve()
    rel = name.strip() or DEFAULTS[family]
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(
            f"checkpoint {name!r} must be a path inside the models directory {base} (no absolute paths or '..'); "
            "copy the file there or set NODEGRAPH_MODELS"
        )
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise CheckpointError(f"checkpoint {name!r} resolves outside the models directory {base}")
    if not path.is_file():
        hint = "" if name.strip() else f"; train it with `python -m nodegraph.train {family}`"
        raise CheckpointError(f"no {family} checkpoint at {path}{hint}")
    return path


def file_fingerprint(path: Path) -> str:
    """Identity of a checkpoint file for the cache key: a changed file must be reloaded."""
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def load(family: str, name: str = "", device: torch.device | str = "cpu", **clip_options) -> object:
    """Load a checkpoint of a family onto a device: ClipModel, DiffusionModel or an nn.Module."""
    path = resolve(name, family)
    if family == "clip":
        model: ClipModel = load_clip(path, **clip_options)
        return model.to(device)
    if family in ("prior", "decoder", "inpaint", "upsampler"):
        dm: DiffusionModel = load_diffusion_model(path, expect_kind=family)
        return dm.to(device)
    if family == "classifier":
        from nodegraph.models.classifier import ClassifierConfig, NoisyClassifier

        return _load_module(path, family, lambda cfg: NoisyClassifier(ClassifierConfig.from_dict(cfg)), device)
    if family == "noised_clip":
        from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower

        return _load_module(path, family, lambda cfg: NoisedImageTower(NoisedClipConfig.from_dict(cfg)), device)
    raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(DEFAULTS)}")


def _load_module(path: Path, kind: str, build, device) -> torch.nn.Module:
    meta = read_metadata(path)
    if meta.get("kind") != kind or "config" not in meta:
        raise CheckpointError(f"{path} is not a nodegraph {kind} checkpoint (its metadata says {meta.get('kind')!r})")
    net = build(meta["config"])
    state = load_state_dict(path, dtype=torch.float32)
    check_compatible(net, state, str(path))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False).to(device)
