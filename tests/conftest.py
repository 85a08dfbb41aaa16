"""Shared fixtures: an Engine on CPU with its own input/output folders, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from nodegraph.engine.api import Engine

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "input").mkdir()
    return Engine("cpu", input_dir=tmp_path / "input", output_dir=tmp_path / "output", plugins=False)


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[Any, str], Path]:
    def write(data: Any, name: str = "workflow.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path

    return write


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m nodegraph ARGS` in a subprocess, as a user would."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nodegraph", *args],
        cwd=cwd or REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_bundled_workflow(name: str, params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run workflows/NAME.json on the bundled weights, on one CPU thread, with PARAMS (each one a param the
    workflow declares): a module fixture may point NODEGRAPH_MODELS at tiny models, a user's run does not."""
    monkeypatch.delenv("NODEGRAPH_MODELS", raising=False)
    path = REPO / "workflows" / f"{name}.json"
    assert set(params) <= set(json.loads(path.read_text())["params"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Engine("cpu", input_dir=tmp_path, output_dir=tmp_path, plugins=False).run(str(path), params=params)
    finally:
        torch.set_num_threads(threads)


def small_unet(seed: int = 0):
    """A tiny UNet with every condition (image embedding, text tokens, pooled text), channels-last, random weights
    everywhere (the zero-initialised output layers would hide a wrong result), frozen for inference."""
    from nodegraph.models.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    cfg = UNetConfig(model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), image_size=16,
                     head_channels=8, norm_groups=4, clip_dim=8, text_dim=8, text_embed_dim=8)
    net = UNet(cfg).eval().requires_grad_(False)
    for p in net.parameters():
        p.add_(0.05 * torch.randn(p.shape))
    return net.to(memory_format=torch.channels_last)
