"""Execution: event order and payloads, progress, interrupts, failing nodes and recovery."""

from __future__ import annotations

import json
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
from nodegraph.errors import InputValueError, Interrupted, NodeExecutionError


class Fail(Node):
    """Raises when `fail` is true, otherwise passes its input through."""

    inputs = {"x": In("FLOAT"), "fail": In("BOOLEAN", default=True)}
    outputs = (Out("FLOAT"),)

    def run(self, ctx: RunContext, x: float, fail: bool) -> tuple[float]:
        if fail:
            raise ValueError(f"refusing {x}")
        return (x,)


class Slow(Node):
    """Counts to `steps`, reporting progress with a preview at every step."""

    inputs = {"steps": In("INT", default=5, min=1), "x": In("FLOAT", default=0.0)}
    outputs = (Out("FLOAT"),)

    def run(self, ctx: RunContext, steps: int, x: float) -> tuple[float]:
        for step in range(steps):
            ctx.progress(step + 1, steps, preview=torch.zeros(1, 3, 8, 8) if step == 0 else None)
        return (x + steps,)


class Blocking(Node):
    """Waits (cooperatively) until interrupted, for the thread test."""

    inputs = {"x": In("FLOAT", default=0.0)}
    outputs = (Out("FLOAT"),)
    started = threading.Event()

    def run(self, ctx: RunContext, x: float) -> tuple[float]:
        Blocking.started.set()
        for _ in range(2000):
            ctx.check_interrupt()
            threading.Event().wait(0.005)
        raise AssertionError("was never interrupted")


@pytest.fixture
def eng(engine: Engine) -> Engine:
    for cls in (Fail, Slow, Blocking):
        engine.registry.register(cls)
    return engine


def collect() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    log: list[tuple[str, dict[str, Any]]] = []
    return log, lambda kind, data: log.append((kind, data))


def test_event_sequence_and_payloads(eng: Engine) -> None:
    workflow = {
        "1": {"class_type": "Float", "inputs": {"value": 1.0}},
        "2": {"class_type": "Slow", "inputs": {"steps": 3, "x": ["1", 0]}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }
    log, on_event = collect()
    result = eng.run(workflow, on_event=on_event, prompt_id="p1")
    kinds = [kind for kind, _ in log]
    assert kinds == [
        "execution_start",
        "execution_cached",
        "executing",
        "executing",
        "progress",
        "progress",
        "progress",
        "executing",
        "executed",
        "execution_success",
        "executing",
    ]
    assert all(data["prompt_id"] == "p1" for _, data in log)
    assert log[1][1]["nodes"] == []
    assert [data["node"] for kind, data in log if kind == "executing"] == ["1", "2", "3", None]
    progress = [data for kind, data in log if kind == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "2"), (2, 3, "2"), (3, 3, "2")]
    assert isinstance(progress[0]["preview"], Image.Image) and "preview" not in progress[1]
    executed = log[8][1]
    assert executed["node"] == "3" and executed["output"] == {"value": 4.0}
    assert result.prompt_id == "p1"
    json.dumps([data for kind, data in log if kind != "progress"])  # payloads are JSON-friendly


def test_cached_rerun_events_replay_outputs(eng: Engine) -> None:
    workflow = {
        "1": {"class_type": "Float", "inputs": {"value": 2.0}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    eng.run(workflow)
    log, on_event = collect()
    eng.run(workflow, on_event=on_event)
    assert [kind for kind, _ in log] == [
        "execution_start",
        "execution_cached",
        "executed",
        "execution_success",
        "executing",
    ]
    assert sorted(log[1][1]["nodes"]) == ["1", "2"]
    assert log[2][1]["output"] == {"value": 2.0}


def test_preview_summarises_tensors_in_events_but_keeps_them_in_the_result(eng: Engine) -> None:
    class MakeTensor(Node):
        outputs = (Out("IMAGE"),)

        def run(self, ctx: RunContext) -> tuple[torch.Tensor]:
            return (torch.zeros(1, 3, 4, 5),)

    eng.registry.register(MakeTensor)
    log, on_event = collect()
    workflow = {"1": {"class_type": "MakeTensor"}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}}
    result = eng.run(workflow, on_event=on_event)
    assert isinstance(result.outputs["2"]["value"], torch.Tensor)
    (output,) = [data["output"] for kind, data in log if kind == "executed"]
    assert output == {"value": {"type": "Tensor", "shape": [1, 3, 4, 5], "dtype": "float32", "device": "cpu"}}


def failing_workflow(fail: bool = True) -> dict[str, Any]:
    return {
        "src": {"class_type": "Float", "inputs": {"value": 3.0}},
        "up": {"class_type": "Add", "inputs": {"a": ["src", 0], "b": 1.0}},
        "bad": {"class_type": "Fail", "inputs": {"x": ["up", 0], "fail": fail}},
        "down": {"class_type": "Add", "inputs": {"a": ["bad", 0], "b": 1.0}},
        "out": {"class_type": "Preview", "inputs": {"value": ["down", 0]}},
    }


def test_failing_node_in_the_middle(eng: Engine) -> None:
    log, on_event = collect()
    with pytest.raises(NodeExecutionError) as caught:
        eng.run(failing_workflow(), on_event=on_event)
    error = caught.value
    assert (error.node_id, error.node_type) == ("bad", "Fail")
    assert isinstance(error.exception, ValueError) and "refusing 4.0" in str(error)
    assert not error.is_input_error
    kinds = [kind for kind, _ in log]
    assert kinds[-2:] == ["execution_error", "executing"] and "execution_success" not in kinds
    payload = log[-2][1]
    assert payload["node_id"] == "bad" and payload["node_type"] == "Fail"
    assert payload["exception_type"] == "builtins.ValueError"
    assert payload["exception_message"] == "refusing 4.0"
    assert any("refusing" in line for line in payload["traceback"])
    assert sorted(payload["executed"]) == ["src", "up"]
    assert log[-1][1]["node"] is None

    # Upstream results survived, and the engine still works once the input is fixed.
    result = eng.run(failing_workflow(fail=False))
    assert result.outputs["out"]["value"] == 5.0
    assert sorted(result.cached) == ["src", "up"]
    assert sorted(result.executed) == ["bad", "down", "out"]


def test_node_input_errors_are_marked_as_such(eng: Engine) -> None:
    class Picky(Node):
        inputs = {"x": In("FLOAT", default=0.0)}
        outputs = (Out("FLOAT"),)

        def run(self, ctx: RunContext, x: float) -> tuple[float]:
            raise InputValueError("x", "must be positive")

    eng.registry.register(Picky)
    with pytest.raises(NodeExecutionError) as caught:
        eng.run({"1": {"class_type": "Picky"}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}})
    assert caught.value.is_input_error


def test_wrong_return_shape_names_the_node(eng: Engine) -> None:
    class Sloppy(Node):
        outputs = (Out("FLOAT"), Out("FLOAT"))

        def run(self, ctx: RunContext) -> Any:
            return 1.0

    eng.registry.register(Sloppy)
    with pytest.raises(NodeExecutionError) as caught:
        eng.run({"1": {"class_type": "Sloppy"}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 1]}}})
    assert caught.value.node_id == "1" and "tuple of 2" in str(caught.value)


def test_interrupt_event_set_before_the_run(eng: Engine) -> None:
    stop = threading.Event()
    stop.set()
    log, on_event = collect()
    with pytest.raises(Interrupted):
        eng.run(failing_workflow(fail=False), on_event=on_event, interrupt=stop)
    kinds = [kind for kind, _ in log]
    assert kinds[-2:] == ["execution_interrupted", "executing"]
    assert not any(kind == "executed" for kind in kinds)


def test_interrupt_at_a_progress_point(eng: Engine) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            seen.append(data["value"])
            if data["value"] == 2:
                stop.set()

    workflow = {
        "1": {"class_type": "Slow", "inputs": {"steps": 50}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    with pytest.raises(Interrupted):
        eng.run(workflow, on_event=on_event, interrupt=stop)
    assert seen == [1, 2]
    assert eng.run(workflow).outputs["2"]["value"] == 50.0  # usable afterwards, nothing stale cached


def test_interrupt_between_nodes_keeps_finished_work(eng: Engine) -> None:
    stop = threading.Event()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "executing" and data["node"] == "bad":
            stop.set()  # "bad" is already starting; the next node must not

    with pytest.raises(Interrupted):
        eng.run(failing_workflow(fail=False), on_event=on_event, interrupt=stop)
    result = eng.run(failing_workflow(fail=False))
    assert sorted(result.cached) == ["bad", "src", "up"]


def test_engine_interrupt_from_another_thread(eng: Engine) -> None:
    Blocking.started.clear()
    assert eng.interrupt() is False  # nothing running
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            eng.run({"1": {"class_type": "Blocking"}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}})
        except BaseException as exc:  # the test inspects whatever was raised
            outcome.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    assert Blocking.started.wait(10)
    assert eng.interrupt() is True
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted)
    assert eng.run(failing_workflow(fail=False)).outputs["out"]["value"] == 5.0


def test_a_broken_listener_does_not_break_the_run(eng: Engine, caplog: pytest.LogCaptureFixture) -> None:
    def on_event(kind: str, data: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    result = eng.run(failing_workflow(fail=False), on_event=on_event)
    assert result.outputs["out"]["value"] == 5.0
    assert "listener bug" in caplog.text


def test_run_context_gives_device_dirs_ids_params_and_generators(eng: Engine, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Inspect(Node):
        inputs = {"seed": In("INT", default=0)}
        outputs = (Out("FLOAT"),)

        def run(self, ctx: RunContext, seed: int) -> tuple[float]:
            seen.update(
                device=ctx.device,
                input_dir=ctx.input_dir,
                output_dir=ctx.output_dir,
                node_id=ctx.node_id,
                node_type=ctx.node_type,
                prompt_id=ctx.prompt_id,
                params=dict(ctx.params),
                workflow=ctx.workflow,
            )
            first = torch.randn(3, generator=ctx.generator(seed))
            again = torch.randn(3, generator=ctx.generator(seed))
            assert torch.equal(first, again)
            return (float(first[0]),)

    eng.registry.register(Inspect)
    workflow = {
        "nodes": {
            "i": {"class_type": "Inspect", "inputs": {}},
            "p": {"class_type": "Preview", "inputs": {"value": ["i", 0]}},
        },
        "params": {"seed": {"node": "i", "input": "seed"}},
    }
    one = eng.run(workflow, {"seed": "7"}, prompt_id="abc").outputs["p"]["value"]
    assert seen["device"] == torch.device("cpu")
    assert seen["input_dir"] == tmp_path / "input" and seen["output_dir"] == tmp_path / "output"
    assert (seen["node_id"], seen["node_type"], seen["prompt_id"]) == ("i", "Inspect", "abc")
    assert seen["params"] == {"seed": 7}
    assert seen["workflow"]["i"]["inputs"] == {"seed": 7}
    eng.clear_cache()
    assert eng.run(workflow, {"seed": 7}).outputs["p"]["value"] == one  # deterministic for a seed


def test_one_shot_run(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parent.parent / "workflows" / "utility_add.json"
    result = nodegraph.run(path, {"a": 1, "b": "2.5"}, device="cpu", output_dir=tmp_path)
    assert list(result.outputs.values()) == [{"value": 3.5}]
    assert len(result.executed) == 4 and result.files == []


def test_import_nodegraph_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, nodegraph; print('torch' in sys.modules, 'nodegraph.engine.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_prepared_run_is_what_validate_reports_on_and_run_executes(eng: Engine) -> None:
    add = {"nodes": {"1": {"class_type": "Float", "inputs": {"value": 2.0}},
                     "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1.0}},
                     "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}}},
           "params": {"a": {"node": "1", "input": "value"}}}
    prepared = eng.prepare(add, {"a": "5"})
    assert prepared.params == {"a": 5.0} and prepared.nodes["1"]["inputs"]["value"] == 5.0
    assert eng.validate(prepared) == []
    assert eng.run(prepared).outputs["3"]["value"] == 6.0
    with pytest.raises(TypeError, match="already has its params"):
        eng.run(prepared, {"a": 1.0})
    with pytest.raises(nodegraph.WorkflowError) as info:
        eng.prepare(add, {"a": "five"})
    assert [issue.type for issue in info.value.errors] == ["invalid_param_value"]
