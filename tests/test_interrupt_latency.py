"""An interrupt takes effect within one step in every long node: no more progress after it, and the run
ends with Interrupted (CLI exit 130, websocket execution_interrupted) instead of finishing its loop."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nodegraph.engine.api import Engine
from nodegraph.errors import Interrupted

from fixtures_models import PRODUCERS, build_tiny_models

STEPS = 12
LONG_NODES: dict[str, dict[str, Any]] = {
    "Prior": {"prior": ["p_prior", 0], "text": ["p_text", 0], "noise": ["p_noise", 0], "steps": STEPS},
    "Decoder": {"decoder": ["p_dec", 0], "noise": ["p_noise", 0], "text": ["p_text", 0], "steps": STEPS},
    "Decoder with CLIP cutouts": {"decoder": ["p_dec", 0], "noise": ["p_noise", 0], "guidance": ["guide", 0],
                                  "steps": STEPS},
    "Upsample": {"upsampler": ["p_ups", 0], "images": ["p_image", 0], "steps": STEPS},
    "DDIMInvert": {"decoder": ["p_dec", 0], "images": ["p_image", 0], "steps": STEPS},
    "Inpaint": {"model": ["p_inp", 0], "images": ["p_image", 0], "mask": ["p_mask", 0], "noise": ["p_noise", 0],
                "steps": STEPS},
    "RePaint": {"decoder": ["p_dec", 0], "images": ["p_image", 0], "mask": ["p_mask", 0], "noise": ["p_noise", 0],
                "steps": STEPS, "jump_length": 3, "resample": 2},
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("latency")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NODEGRAPH_MODELS", str(models["clip"].parent))
        yield Engine("cpu", input_dir=root, output_dir=root / "out", plugins=False)


@pytest.mark.parametrize("name", list(LONG_NODES))
def test_interrupt_stops_a_long_node_within_one_step(engine: Engine, name: str) -> None:
    class_type = name.split()[0]
    graph = {**PRODUCERS, "node": {"class_type": class_type, "inputs": LONG_NODES[name]},
             "out": {"class_type": "Preview", "inputs": {"value": ["node", 0]}},
             "guide": {"class_type": "GuidanceCombine", "inputs": {"text_1": ["p_text", 0], "clip": ["p_clipguid", 0]}}}
    progress: list[float] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and data["node"] == "node":
            progress.append(time.perf_counter())
            if len(progress) == 3:
                engine.interrupt()

    with pytest.raises(Interrupted):
        engine.run(graph, on_event=on_event)
    assert len(progress) == 3, f"{name}: {len(progress) - 3} more step(s) ran after the interrupt"
