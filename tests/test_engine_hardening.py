"""Hardening of the engine against its callers: results they cannot corrupt, runs they cannot deadlock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import nodegraph
from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.generate.conditions import Latent


class Tensors(Node):
    """Makes a fixed tensor and a Latent holding one."""

    inputs = {"n": In("INT", default=3)}
    outputs = (Out("IMAGE", "images"), Out("LATENT", "latent"))

    def run(self, ctx: RunContext, n: int) -> tuple[torch.Tensor, Latent]:
        return torch.ones(1, 3, n, n), Latent(torch.ones(1, 3, n, n), (10, 5, 0))


def graph() -> dict[str, Any]:
    return {
        "t": {"class_type": "Tensors", "inputs": {}},
        "image": {"class_type": "Preview", "inputs": {"value": ["t", 0]}},
        "latent": {"class_type": "Preview", "inputs": {"value": ["t", 1]}},
    }


@pytest.fixture
def eng(engine: Engine) -> Engine:
    engine.registry.register(Tensors)
    return engine


def test_editing_a_result_in_place_does_not_change_the_next_run(eng: Engine) -> None:
    first = eng.run(graph())
    first.outputs["image"]["value"].zero_()
    first.outputs["latent"]["value"].x.mul_(7)
    first.outputs["image"]["extra"] = "mine"
    again = eng.run(graph())
    assert again.executed == []  # served from the cache...
    assert torch.equal(again.outputs["image"]["value"], torch.ones(1, 3, 3, 3))  # ...as it was made
    assert torch.equal(again.outputs["latent"]["value"].x, torch.ones(1, 3, 3, 3))
    assert again.outputs["latent"]["value"].timesteps == (10, 5, 0) and "extra" not in again.outputs["image"]


def test_editing_a_file_record_does_not_change_the_next_run(eng: Engine) -> None:
    Image.new("RGB", (4, 4)).save(eng.input_dir / "in.png")
    workflow = {"load": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
                "save": {"class_type": "SaveImage", "inputs": {"images": ["load", 0], "filename_prefix": "x"}}}
    first = eng.run(workflow)
    first.outputs["save"]["images"][0]["filename"] = "../../etc/passwd"
    first.outputs["save"]["images"].append({"filename": "ghost.png"})
    first.files.clear()
    again = eng.run(workflow)
    assert again.outputs["save"]["images"] == [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}]
    assert [Path(p).name for p in again.files] == ["x_00001_.png"]


def test_a_run_started_from_inside_a_run_is_refused_not_a_deadlock(eng: Engine) -> None:
    seen: list[BaseException] = []

    def reenter(kind: str, data: dict[str, Any]) -> None:
        if kind == "execution_start":
            try:
                eng.run(graph())
            except nodegraph.ReentrantRunError as exc:
                seen.append(exc)

    finished = threading.Event()

    def target() -> None:
        eng.run(graph(), on_event=reenter)
        finished.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert finished.wait(60), "Engine.run from a callback hung"
    assert len(seen) == 1 and "from inside a run" in str(seen[0])
    assert eng.run(graph()).outputs["image"]["value"].shape == (1, 3, 3, 3)  # the engine is still usable


LINKED_LIMITS = [
    ({"class_type": "Int", "inputs": {"value": 100_000}}, ("Noise", "batch_size"), "above the maximum 64"),
    ({"class_type": "Int", "inputs": {"value": -3}}, ("Noise", "seed"), "below the minimum 0"),
    ({"class_type": "String", "inputs": {"value": "euler"}}, ("Decoder", "sampler"), "choose one of 'ddim'"),
    ({"class_type": "Int", "inputs": {"value": 16}}, ("RenderScene", "resolution"), "choose one of 32, 64, 128"),
]


def _linked(source: dict, class_type: str, name: str) -> dict:
    workflow = {"src": source, "node": {"class_type": class_type, "inputs": {name: ["src", 0]}},
                "out": {"class_type": "Preview", "inputs": {"value": ["node", 0]}}}
    if class_type == "Decoder":  # it must get as far as checking its inputs: give it what else it needs
        workflow["node"]["inputs"].update(decoder=["dec", 0], noise=["noise", 0])
        workflow.update(dec={"class_type": "DecoderLoader", "inputs": {}},
                        noise={"class_type": "Noise", "inputs": {}})
    return workflow


@pytest.mark.parametrize(("source", "target", "fragment"), LINKED_LIMITS)
def test_a_constant_nodes_value_out_of_limits_is_reported_before_anything_runs(
        engine: Engine, source: dict, target: tuple[str, str], fragment: str) -> None:
    """An Int / Float / String node's value is known when the graph is validated: a value the input it feeds
    refuses is reported there, with every other problem, and nothing runs (a workflow param lands in such a
    node, and a bad one used to surface only when its consumer started)."""
    class_type, name = target
    events: list[str] = []
    with pytest.raises(nodegraph.WorkflowError) as info:
        engine.run(_linked(source, class_type, name), on_event=lambda kind, data: events.append(kind))
    [issue] = info.value.errors
    assert (issue.node, issue.input) == ("node", name)
    assert fragment in issue.message and "node 'src'" in issue.message
    assert "executing" not in events


@pytest.mark.parametrize(("source", "target", "fragment"), LINKED_LIMITS)
def test_limits_hold_for_values_that_arrive_over_a_link(engine: Engine, source: dict, target: tuple[str, str],
                                                         fragment: str) -> None:
    """A range or choice is checked when a constant is written and again when a linked value arrives, before the
    node runs (a linked size of 5 000 once made a 5 000² image; a batch of 100 000 reached the allocator). Here
    the value is only known at run time: the constant node's own value comes over a link."""
    class_type, name = target
    workflow = _linked({"class_type": source["class_type"], "inputs": {"value": ["first", 0]}}, class_type, name)
    workflow["first"] = source
    with pytest.raises(nodegraph.NodeExecutionError) as info:
        engine.run(workflow)
    error = info.value
    assert error.node_id == "node" and error.input == name and error.is_input_error
    assert fragment in str(error) and "from node 'src'" in str(error)


def test_a_computed_value_out_of_range_is_refused_before_its_consumer_runs(engine: Engine) -> None:
    workflow = {"sum": {"class_type": "Add", "inputs": {"a": 15.0, "b": 10.0}},
                "push": {"class_type": "EditGuidance", "inputs": {"strength": ["sum", 0]}},
                "out": {"class_type": "Preview", "inputs": {"value": ["push", 0]}}}
    with pytest.raises(nodegraph.NodeExecutionError) as info:
        engine.run(workflow)
    assert info.value.node_id == "push" and info.value.input == "strength"
    assert "25.0 arrived from node 'sum', above the maximum 20.0" in str(info.value)
