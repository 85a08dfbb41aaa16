"""On a machine with CUDA: tensors stay on the device that made them and are budgeted per device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Noise(Node):
    """Seeded noise on the engine's device: the pattern an image node follows."""

    inputs = {"seed": In("INT", default=0, min=0), "size": In("INT", default=1024, min=1)}
    outputs = (Out("NOISE"),)

    def run(self, ctx: RunContext, seed: int, size: int) -> tuple[torch.Tensor]:
        noise = torch.randn(size, generator=ctx.generator(seed, "cpu")).to(ctx.device)
        ctx.progress(1, 1, preview=torch.zeros(1, 3, 8, 8, device=ctx.device))
        return (noise,)


def workflow(seed: int) -> dict[str, object]:
    return {
        "n": {"class_type": "Noise", "inputs": {"seed": seed}},
        "p": {"class_type": "Preview", "inputs": {"value": ["n", 0]}},
    }


def test_cuda_outputs_stay_on_cuda_and_are_budgeted_per_device(tmp_path: Path) -> None:
    engine = Engine("cuda", output_dir=tmp_path, plugins=False, cache_budgets={"cuda": 2 * 8192})
    engine.registry.register(Noise, replace=True)
    first = engine.run(workflow(1)).outputs["p"]["value"]
    assert first.device.type == "cuda"
    assert set(engine.cache.used) == {f"cuda:{first.device.index}"}
    cpu = Engine("cpu", output_dir=tmp_path, plugins=False)
    cpu.registry.register(Noise, replace=True)
    assert torch.equal(cpu.run(workflow(1)).outputs["p"]["value"], first.cpu())  # same seed, same noise
    for seed in (2, 3, 4):
        engine.run(workflow(seed))
    assert max(engine.cache.used.values()) <= 2 * 8192


def test_auto_picks_cuda_and_images_round_trip(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (200, 100, 0)).save(tmp_path / "in" / "a.png")
    engine = Engine("auto", input_dir=tmp_path / "in", output_dir=tmp_path / "out", plugins=False)
    assert engine.device.type == "cuda"
    result = engine.run(
        {
            "l": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
            "s": {"class_type": "SaveImage", "inputs": {"images": ["l", 0]}},
            "p": {"class_type": "Preview", "inputs": {"value": ["l", 0]}},
        }
    )
    assert result.outputs["p"]["value"].device.type == "cuda"
    with Image.open(result.files[0]) as saved:
        assert saved.getpixel((0, 0)) == (200, 100, 0)
