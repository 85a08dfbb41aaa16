"""Caching: Merkle signatures decide what re-runs; LRU under per-device byte budgets decides what stays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from nodegraph.engine.api import Engine
from nodegraph.engine.cache import CacheEntry, OutputCache, tensor_bytes
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.nodes.utility import Add, Float


@pytest.fixture
def calls(engine: Engine) -> list[str]:
    """Node ids in execution order, recorded by counting stand-ins for Add and Float."""
    log: list[str] = []

    class CountingAdd(Add):
        def run(self, ctx: RunContext, a: float, b: float) -> tuple[float]:
            log.append(ctx.node_id)
            return super().run(ctx, a, b)

    class CountingFloat(Float):
        def run(self, ctx: RunContext, value: float) -> tuple[float]:
            log.append(ctx.node_id)
            return super().run(ctx, value)

    engine.registry.register(CountingAdd, name="Add", replace=True)
    engine.registry.register(CountingFloat, name="Float", replace=True)
    return log


def diamond(top: float = 1.0, left_b: float = 10.0) -> dict[str, Any]:
    """top -> left, right -> join -> Preview, plus a branch no output needs."""
    return {
        "top": {"class_type": "Float", "inputs": {"value": top}},
        "left": {"class_type": "Add", "inputs": {"a": ["top", 0], "b": left_b}},
        "right": {"class_type": "Add", "inputs": {"a": ["top", 0], "b": 100.0}},
        "join": {"class_type": "Add", "inputs": {"a": ["left", 0], "b": ["right", 0]}},
        "unused": {"class_type": "Add", "inputs": {"a": ["top", 0], "b": 5.0}},
        "out": {"class_type": "Preview", "inputs": {"value": ["join", 0]}},
    }


def test_first_run_executes_only_what_outputs_need(engine: Engine, calls: list[str]) -> None:
    result = engine.run(diamond())
    assert result.outputs == {"out": {"value": 112.0}}
    assert sorted(calls) == ["join", "left", "right", "top"]
    assert sorted(result.executed) == ["join", "left", "out", "right", "top"]
    assert result.cached == []


def test_identical_rerun_executes_nothing_and_returns_every_output(engine: Engine, calls: list[str]) -> None:
    engine.run(diamond())
    calls.clear()
    result = engine.run(diamond())
    assert calls == [] and result.executed == []
    assert result.outputs == {"out": {"value": 112.0}}
    assert sorted(result.cached) == ["join", "left", "out", "right", "top"]


def test_changing_one_input_reexecutes_exactly_it_and_its_descendants(engine: Engine, calls: list[str]) -> None:
    engine.run(diamond())
    calls.clear()
    result = engine.run(diamond(left_b=20.0))
    assert sorted(calls) == ["join", "left"]
    assert sorted(result.executed) == ["join", "left", "out"]
    assert result.outputs["out"]["value"] == 122.0
    calls.clear()
    result = engine.run(diamond(top=2.0, left_b=20.0))
    assert sorted(calls) == ["join", "left", "right", "top"]
    assert result.outputs["out"]["value"] == 124.0


def test_going_back_to_an_earlier_input_is_served_from_cache(engine: Engine, calls: list[str]) -> None:
    engine.run(diamond())
    engine.run(diamond(left_b=20.0))
    calls.clear()
    assert engine.run(diamond()).outputs["out"]["value"] == 112.0
    assert calls == []


def test_node_ids_are_not_part_of_the_key(engine: Engine, calls: list[str]) -> None:
    engine.run(diamond())
    calls.clear()
    renamed = {
        "A": {"class_type": "Float", "inputs": {"value": 1.0}},
        "B": {"class_type": "Add", "inputs": {"a": ["A", 0], "b": 10.0}},
        "C": {"class_type": "Preview", "inputs": {"value": ["B", 0]}},
    }
    result = engine.run(renamed)
    assert calls == [] and result.outputs["C"]["value"] == 11.0


def test_identical_subgraphs_in_one_run_execute_once(engine: Engine, calls: list[str]) -> None:
    workflow = {
        "x1": {"class_type": "Float", "inputs": {"value": 3.0}},
        "y1": {"class_type": "Add", "inputs": {"a": ["x1", 0], "b": 1.0}},
        "x2": {"class_type": "Float", "inputs": {"value": 3.0}},
        "y2": {"class_type": "Add", "inputs": {"a": ["x2", 0], "b": 1.0}},
        "sum": {"class_type": "Add", "inputs": {"a": ["y1", 0], "b": ["y2", 0]}},
        "out": {"class_type": "Preview", "inputs": {"value": ["sum", 0]}},
    }
    result = engine.run(workflow)
    assert result.outputs["out"]["value"] == 8.0
    assert len(calls) == 3  # one Float, one Add(+1), the sum
    assert len(result.executed) + len(result.cached) == 6


def test_requested_outputs_limit_the_run(engine: Engine, calls: list[str]) -> None:
    workflow = {
        **diamond(),
        "out2": {"class_type": "Preview", "inputs": {"value": ["unused", 0]}},
    }
    result = engine.run(workflow, outputs=["out2"])
    assert sorted(calls) == ["top", "unused"]
    assert list(result.outputs) == ["out2"]


def test_version_joins_the_key(engine: Engine, calls: list[str]) -> None:
    workflow = {
        "1": {"class_type": "Add", "inputs": {"a": 1.0}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    engine.run(workflow)

    class AddV2(Add):
        version = 2

        def run(self, ctx: RunContext, a: float, b: float) -> tuple[float]:
            calls.append("v2")
            return (a + b + 1000,)

    engine.registry.register(AddV2, name="Add", replace=True)
    assert engine.run(workflow).outputs["2"]["value"] == 1001.0
    assert calls[-1] == "v2"


def test_fingerprint_joins_the_key(engine: Engine) -> None:
    state = {"content": "one", "runs": 0}

    class External(Node):
        inputs = {"name": In("STRING", default="x")}
        outputs = (Out("STRING"),)

        @classmethod
        def fingerprint(cls, ctx: RunContext, name: str) -> str:
            return state["content"]

        def run(self, ctx: RunContext, name: str) -> tuple[str]:
            state["runs"] += 1
            return (state["content"],)

    engine.registry.register(External)
    workflow = {
        "1": {"class_type": "External", "inputs": {}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    assert engine.run(workflow).outputs["2"]["value"] == "one"
    assert engine.run(workflow).outputs["2"]["value"] == "one"
    assert state["runs"] == 1
    state["content"] = "two"
    assert engine.run(workflow).outputs["2"]["value"] == "two"
    assert state["runs"] == 2


def test_clear_cache_makes_the_next_run_cold(engine: Engine, calls: list[str]) -> None:
    engine.run(diamond())
    engine.clear_cache()
    calls.clear()
    engine.run(diamond())
    assert len(calls) == 4


# ---------------------------------------------------------------- byte budgets


class Ones(Node):
    """Makes a float32 tensor of `size` elements filled with `value` (4 * size bytes)."""

    inputs = {"size": In("INT", default=256, min=1), "value": In("FLOAT", default=1.0)}
    outputs = (Out("TENSOR"),)

    def run(self, ctx: RunContext, size: int, value: float) -> tuple[torch.Tensor]:
        return (torch.full((size,), value, device=ctx.device),)


class Total(Node):
    inputs = {"x": In("TENSOR"), "scale": In("FLOAT", default=1.0)}
    outputs = (Out("FLOAT"),)

    def run(self, ctx: RunContext, x: torch.Tensor, scale: float) -> tuple[float]:
        return (float(x.sum()) * scale,)


def tensor_workflow(value: float, preview_tensor: bool = False) -> dict[str, Any]:
    """A 1 KiB tensor and its sum; optionally a Preview of the tensor itself."""
    workflow = {
        "t": {"class_type": "Ones", "inputs": {"size": 256, "value": value}},
        "s": {"class_type": "Total", "inputs": {"x": ["t", 0]}},
        "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    }
    if preview_tensor:
        workflow["pt"] = {"class_type": "Preview", "inputs": {"value": ["t", 0]}}
    return workflow


def test_lru_evicts_under_the_cpu_budget(tmp_path: Any) -> None:
    engine = Engine("cpu", output_dir=tmp_path, plugins=False, cache_budgets={"cpu": 3 * 1024})
    engine.registry.register(Ones)
    engine.registry.register(Total)
    for value in (1.0, 2.0, 3.0, 4.0):
        engine.run(tensor_workflow(value))
        assert engine.cache.used["cpu"] <= 3 * 1024
    assert engine.cache.used["cpu"] == 3 * 1024  # three 1 KiB tensors fit
    # value 1.0 was least recently used, so its tensor was evicted; 4.0's is still cached.
    assert "t" not in engine.run(tensor_workflow(1.0)).cached
    assert "t" in engine.run(tensor_workflow(4.0)).cached


def test_recently_used_entries_survive(tmp_path: Any) -> None:
    engine = Engine("cpu", output_dir=tmp_path, plugins=False, cache_budgets={"cpu": 2 * 1024})
    engine.registry.register(Ones)
    engine.registry.register(Total)
    engine.run(tensor_workflow(1.0))
    engine.run(tensor_workflow(2.0))
    engine.run(tensor_workflow(1.0))  # a cached re-run still marks 1.0's tensor as used
    engine.run(tensor_workflow(3.0))  # evicts 2.0, the least recently used
    assert "t" in engine.run(tensor_workflow(1.0)).cached
    assert "t" not in engine.run(tensor_workflow(2.0)).cached


def test_an_entry_larger_than_the_budget_is_not_cached_but_the_run_succeeds(tmp_path: Any) -> None:
    engine = Engine("cpu", output_dir=tmp_path, plugins=False, cache_budgets={"cpu": 512})
    engine.registry.register(Ones)
    engine.registry.register(Total)
    result = engine.run(tensor_workflow(2.0))
    assert result.outputs["p"]["value"] == 512.0
    assert engine.cache.used.get("cpu", 0) == 0
    assert "t" not in engine.run(tensor_workflow(2.0)).cached


def test_values_evicted_during_a_run_are_still_delivered(tmp_path: Any) -> None:
    engine = Engine("cpu", output_dir=tmp_path, plugins=False, cache_budgets={"cpu": 1024})
    engine.registry.register(Ones)
    engine.registry.register(Total)
    workflow = {
        "a": {"class_type": "Ones", "inputs": {"size": 256, "value": 1.0}},
        "b": {"class_type": "Ones", "inputs": {"size": 256, "value": 2.0}},  # evicts a from the cache
        "sa": {"class_type": "Total", "inputs": {"x": ["a", 0]}},
        "sb": {"class_type": "Total", "inputs": {"x": ["b", 0]}},
        "sum": {"class_type": "Add", "inputs": {"a": ["sa", 0], "b": ["sb", 0]}},
        "p": {"class_type": "Preview", "inputs": {"value": ["sum", 0]}},
    }
    assert engine.run(workflow).outputs["p"]["value"] == 768.0


def test_cached_tensors_are_returned_as_copies_a_caller_cannot_corrupt(engine: Engine) -> None:
    engine.registry.register(Ones)
    engine.registry.register(Total)
    first = engine.run(tensor_workflow(1.0, preview_tensor=True)).outputs["pt"]["value"]
    again = engine.run(tensor_workflow(1.0, preview_tensor=True))
    second = again.outputs["pt"]["value"]
    assert again.executed == [] and second is not first and torch.equal(second, first)
    assert second.device.type == "cpu"


def test_tensors_recorded_by_output_nodes_count_against_the_budget(engine: Engine) -> None:
    engine.registry.register(Ones)
    engine.registry.register(Total)
    engine.run(tensor_workflow(1.0))
    assert engine.cache.used["cpu"] == 1024
    engine.run(tensor_workflow(1.0, preview_tensor=True))
    assert engine.cache.used["cpu"] == 2048  # the Preview's entry holds the tensor as well


def test_entry_count_limit(tmp_path: Any) -> None:
    engine = Engine("cpu", output_dir=tmp_path, plugins=False, max_cache_entries=3)
    for value in range(5):
        engine.run(
            {
                "1": {"class_type": "Float", "inputs": {"value": float(value)}},
                "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
            }
        )
    assert len(engine.cache) == 3


@dataclass
class Holder:
    weights: torch.Tensor
    name: str


def test_tensor_bytes_finds_tensors_in_containers_dataclasses_and_modules() -> None:
    x = torch.zeros(10)  # 40 bytes
    module = torch.nn.Linear(3, 2)  # 6 + 2 float32 parameters
    module.register_buffer("extra", torch.zeros(4, dtype=torch.float64))  # 32 bytes
    value = (x, [torch.zeros(2, dtype=torch.int64)], {"m": module}, Holder(torch.zeros(5), "h"), 3, "s", None)
    assert tensor_bytes(value) == {"cpu": 40 + 16 + 32 + 32 + 20}


def test_tensor_bytes_counts_shared_storage_once_and_whole_storage_for_views() -> None:
    base = torch.zeros(100)
    assert tensor_bytes((base, base[:10], base.view(10, 10))) == {"cpu": 400}
    assert tensor_bytes((1.0, "x", None)) == {}


def test_budgets_are_per_device_and_entries_on_other_devices_are_untouched() -> None:
    cache = OutputCache({"cpu": 100, "cuda": 1000})
    cache.put("gpu", CacheEntry((), None, None, {"cuda:0": 800}))
    cache.put("a", CacheEntry((), None, None, {"cpu": 60}))
    cache.put("b", CacheEntry((), None, None, {"cpu": 60}))
    assert "a" not in cache and "b" in cache and "gpu" in cache
    assert cache.used == {"cuda:0": 800, "cpu": 60}
    assert cache.budget("cuda:3") == 1000
    assert not cache.put("huge", CacheEntry((), None, None, {"cpu": 101}))


def test_long_chains_need_no_recursion(engine: Engine, calls: list[str]) -> None:
    import sys

    length = 3000
    workflow: dict[str, Any] = {"0": {"class_type": "Float", "inputs": {"value": 0.0}}}
    for index in range(1, length + 1):
        workflow[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1.0}}
    workflow["out"] = {"class_type": "Preview", "inputs": {"value": [str(length), 0]}}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)  # far below the chain's length: any recursion over nodes would fail
    try:
        first = engine.run(workflow)
        again = engine.run(workflow)
        workflow["0"] = {"class_type": "Float", "inputs": {"value": 1.0}}
        changed = engine.run(workflow)
    finally:
        sys.setrecursionlimit(limit)
    assert first.outputs["out"]["value"] == float(length)
    assert again.executed == [] and changed.outputs["out"]["value"] == float(length + 1)
    assert len(changed.executed) == length + 2
