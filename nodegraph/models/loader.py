"""Loading a checkpoint of a model family onto a device: one entry point for nodes, training and benches.

Files are found by `nodegraph.weights` (the bundled weights, or the NODEGRAPH_MODELS directory); this
module only reads them. Every failure is a CheckpointError naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nodegraph import weights
from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import build_checked, load_state_dict, read_metadata
from nodegraph.models.clip import ClipModel, load_clip
from nodegraph.models.config import from_metadata
from nodegraph.models.diffusion_model import DiffusionModel, DiffusionSpec, load_diffusion_model

DIFFUSION_FAMILIES = ("prior", "decoder", "inpaint", "upsampler")


def load(family: str, name: str = "", device: torch.device | str = "cpu", **clip_options) -> object:
    """The checkpoint `name` of a family (relative to the models directory; "" = the default file)."""
    if family not in weights.DEFAULT_FILES:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(weights.DEFAULT_FILES)}")
    return load_file(family, weights.resolve(name, family), device, **clip_options)


def load_file(family: str, path: Path, device: torch.device | str = "cpu", **clip_options) -> object:
    """A checkpoint file of a family: ClipModel, DiffusionModel, GanModel (stylegan) or an nn.Module (classifier,
    noised CLIP)."""
    if family == "clip":
        clip: ClipModel = load_clip(path, **clip_options)
        return clip.to(device)
    if family in DIFFUSION_FAMILIES:
        model: DiffusionModel = load_diffusion_model(path, expect_kind=family)
        return model.to(device)
    if family == "classifier":
        from nodegraph.models.classifier import ClassifierConfig, NoisyClassifier

        return _load_module(path, family, ClassifierConfig, NoisyClassifier, device)
    if family == "noised_clip":
        from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower

        return _load_module(path, family, NoisedClipConfig, NoisedImageTower, device)
    if family == "stylegan":  # the bundled generator, or a StyleGAN2 checkpoint in rosinality's layout
        from nodegraph.models.stylegan_checkpoint import load_generator

        return load_generator(path, device)
    raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(weights.DEFAULT_FILES)}")


def _load_module(path: Path, kind: str, config_cls: type, net_cls: Callable[[Any], torch.nn.Module],
                 device) -> torch.nn.Module:
    """A noisy classifier or noised CLIP tower: (x_t, t) networks whose metadata holds their config."""
    meta = read_metadata(path)
    if meta.get("kind") != kind or "config" not in meta:
        raise CheckpointError(f"{path} is not a nodegraph {kind} checkpoint (its metadata says {meta.get('kind')!r})")
    config = from_metadata(config_cls, meta["config"], str(path))
    # the schedule it was trained on: unused when guiding, but a damaged record is a damaged file
    from_metadata(DiffusionSpec, meta.get("diffusion", {}), f"{path} (diffusion)")
    size = config.image_size

    def probe(shell: torch.nn.Module) -> None:
        shell(torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long))

    net = build_checked(lambda: net_cls(config), probe, load_state_dict(path, dtype=torch.float32), str(path))
    return net.eval().requires_grad_(False).to(device)
