"""Interrupt latency of every long node on the bundled models: time per step, and time from the interrupt
request (made at the third step's progress event) to the run returning Interrupted.

    OMP_NUM_THREADS=2 .venv/bin/python bench/interrupt_latency.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from nodegraph.engine.api import Engine
from nodegraph.errors import Interrupted

CAPTION = "a large red circle on the left on a blue background"
STEPS = 25
GRAPH: dict[str, Any] = {
    "clip": {"class_type": "CLIPLoader", "inputs": {}},
    "prior": {"class_type": "PriorLoader", "inputs": {}},
    "dec": {"class_type": "DecoderLoader", "inputs": {}},
    "inp": {"class_type": "InpaintLoader", "inputs": {}},
    "ups": {"class_type": "UpsamplerLoader", "inputs": {}},
    "image": {"class_type": "RenderScene", "inputs": {"caption": CAPTION, "resolution": 32}},
    "mask": {"class_type": "MaskFromRect", "inputs": {"width": 32, "height": 32}},
    "text": {"class_type": "TextEncode", "inputs": {"clip": ["clip", 0], "text": CAPTION}},
    "noise": {"class_type": "Noise", "inputs": {}},
    "cutouts": {"class_type": "CLIPGuidance", "inputs": {"text": ["text", 0], "clip": ["clip", 0], "mode": "x0",
                                                         "cutn": 16}},
    "guide": {"class_type": "GuidanceCombine", "inputs": {"text_1": ["text", 0], "clip": ["cutouts", 0]}},
}
NODES: dict[str, dict[str, Any]] = {
    "Prior": {"class_type": "Prior", "inputs": {"prior": ["prior", 0], "text": ["text", 0], "noise": ["noise", 0]}},
    "Decoder": {"class_type": "Decoder", "inputs": {"decoder": ["dec", 0], "noise": ["noise", 0],
                                                    "text": ["text", 0]}},
    "Decoder + CLIP cutouts (16)": {"class_type": "Decoder", "inputs": {"decoder": ["dec", 0], "noise": ["noise", 0],
                                                                        "guidance": ["guide", 0]}},
    "Upsample": {"class_type": "Upsample", "inputs": {"upsampler": ["ups", 0], "images": ["image", 0]}},
    "DDIMInvert": {"class_type": "DDIMInvert", "inputs": {"decoder": ["dec", 0], "images": ["image", 0]}},
    "Inpaint": {"class_type": "Inpaint", "inputs": {"model": ["inp", 0], "images": ["image", 0], "mask": ["mask", 0],
                                                    "noise": ["noise", 0], "text": ["text", 0]}},
    "RePaint": {"class_type": "RePaint", "inputs": {"decoder": ["dec", 0], "images": ["image", 0],
                                                    "mask": ["mask", 0], "noise": ["noise", 0], "resample": 3}},
}


def measure(engine: Engine, name: str, node: dict[str, Any]) -> tuple[float, float, int]:
    node = {**node, "inputs": {**node["inputs"], "steps": STEPS}}
    graph = {**GRAPH, "node": node, "out": {"class_type": "Preview", "inputs": {"value": ["node", 0]}}}
    times: list[float] = []
    asked: list[float] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and data["node"] == "node":
            times.append(time.perf_counter())
            if len(times) == 3:
                asked.append(time.perf_counter())
                engine.interrupt()

    try:
        engine.run(graph, on_event=on_event)
    except Interrupted:
        pass
    returned = time.perf_counter()
    step = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
    return step, returned - asked[0], len(times) - 3


def main() -> None:
    engine = Engine("cpu")
    print(f"{'node':<30}{'s/step':>9}{'latency s':>11}{'steps after':>13}")
    print("-" * 63)
    for name, node in NODES.items():
        measure(engine, name, node)  # loads the models; the second run is the one reported
        step, latency, extra = measure(engine, name, node)
        print(f"{name:<30}{step:>9.3f}{latency:>11.3f}{extra:>13}")


if __name__ == "__main__":
    main()
