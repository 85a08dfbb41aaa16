"""Loading a checkpoint of a model family onto a device: one entry point for nodes, training and benches.

Files are found by `nodegraph.weights` (the bundled weights, or the NODEGRAPH_MODELS directory); this
module only reads them. Every failure is a CheckpointError naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from nodegraph import weights
from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import check_compatible, load_state_dict, read_metadata
from nodegraph.models.clip import ClipModel, load_clip
from nodegraph.models.diffusion_model import DiffusionModel, load_diffusion_model

DIFFUSION_FAMILIES = ("prior", "decoder", "inpaint", "upsampler")


def load(family: str, name: str = "", device: torch.device | str = "cpu", **clip_options) -> object:
    """The checkpoint `name` of a family (relative to the models directory; "" = the default file)."""
    if family not in weights.DEFAULT_FILES:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(weights.DEFAULT_FILES)}")
    return load_file(family, weights.resolve(name, family), device, **clip_options)


def load_file(family: str, path: Path, device: torch.device | str = "cpu", **clip_options) -> object:
    """A checkpoint file of a family: ClipModel, DiffusionModel or an nn.Module (classifier, noised CLIP)."""
    if family == "clip":
        clip: ClipModel = load_clip(path, **clip_options)
        return clip.to(device)
    if family in DIFFUSION_FAMILIES:
        model: DiffusionModel = load_diffusion_model(path, expect_kind=family)
        return model.to(device)
    if family == "classifier":
        from nodegraph.models.classifier import ClassifierConfig, NoisyClassifier

        return _load_module(path, family, lambda cfg: NoisyClassifier(ClassifierConfig.from_dict(cfg)), device)
    if family == "noised_clip":
        from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower

        return _load_module(path, family, lambda cfg: NoisedImageTower(NoisedClipConfig.from_dict(cfg)), device)
    raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(weights.DEFAULT_FILES)}")


def _load_module(path: Path, kind: str, build: Callable[[dict], torch.nn.Module], device) -> torch.nn.Module:
    meta = read_metadata(path)
    if meta.get("kind") != kind or "config" not in meta:
        raise CheckpointError(f"{path} is not a nodegraph {kind} checkpoint (its metadata says {meta.get('kind')!r})")
    net = build(meta["config"])
    state = load_state_dict(path, dtype=torch.float32)
    check_compatible(net, state, str(path))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False).to(device)
