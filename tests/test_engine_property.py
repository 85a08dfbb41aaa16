"""Property: on random DAGs of utility nodes the engine agrees with a naive recursive evaluation,
and after random edits it never serves a stale value and re-executes exactly what depends on an edit."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.registry import Registry
from nodegraph.nodes.utility import Add, Float

CALLS: list[str] = []


class CountingAdd(Add):
    def run(self, ctx: RunContext, a: float, b: float) -> tuple[float]:
        CALLS.append(ctx.node_id)
        return super().run(ctx, a, b)


class CountingFloat(Float):
    def run(self, ctx: RunContext, value: float) -> tuple[float]:
        CALLS.append(ctx.node_id)
        return super().run(ctx, value)


def make_engine(max_entries: int = 100_000) -> Engine:
    registry = Registry.discover(plugins=False)
    registry.register(CountingAdd, name="Add", replace=True)
    registry.register(CountingFloat, name="Float", replace=True)
    return Engine("cpu", registry=registry, max_cache_entries=max_entries)


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, Any]:
    """A DAG of Float and Add nodes where every node's signature is distinct (fresh constants,
    no two Adds linking the same pair), so "exactly the descendants" is well defined."""
    fresh = itertools.count(1)
    size = draw(st.integers(1, 18))
    nodes: dict[str, dict[str, Any]] = {}
    pairs: set[tuple[str, str]] = set()
    for index in range(size):
        node_id = f"n{index}"
        if index == 0 or draw(st.integers(0, 3)) == 0:
            nodes[node_id] = {"class_type": "Float", "inputs": {"value": next(fresh) + 0.5}}
            continue
        inputs: dict[str, Any] = {}
        for name in ("a", "b"):
            if draw(st.booleans()):
                inputs[name] = [f"n{draw(st.integers(0, index - 1))}", 0]
            else:
                inputs[name] = float(next(fresh))
        if isinstance(inputs["a"], list) and isinstance(inputs["b"], list):
            pair = (inputs["a"][0], inputs["b"][0])
            if pair in pairs:
                inputs["b"] = float(next(fresh))
            pairs.add(pair)
        nodes[node_id] = {"class_type": "Add", "inputs": inputs}
    shown = draw(st.sets(st.sampled_from(sorted(nodes)), min_size=1))
    for node_id in sorted(shown):
        nodes[f"show_{node_id}"] = {"class_type": "Preview", "inputs": {"value": [node_id, 0]}}
    editable = st.sampled_from(sorted(node_id for node_id in nodes if node_id.startswith("n")))
    edits = draw(st.lists(st.lists(editable, min_size=1, max_size=3), max_size=4))
    return {"nodes": nodes, "edits": edits, "fresh_start": next(fresh)}


def evaluate(nodes: dict[str, Any], node_id: str, memo: dict[str, float]) -> float:
    """Naive recursive evaluation of a utility graph."""
    if node_id not in memo:
        node = nodes[node_id]
        if node["class_type"] == "Float":
            memo[node_id] = float(node["inputs"]["value"])
        else:
            a, b = (
                evaluate(nodes, value[0], memo) if isinstance(value, list) else float(value)
                for value in (node["inputs"]["a"], node["inputs"]["b"])
            )
            memo[node_id] = a + b
    return memo[node_id]


def expected_outputs(nodes: dict[str, Any]) -> dict[str, dict[str, float]]:
    memo: dict[str, float] = {}
    return {
        node_id: {"value": evaluate(nodes, node["inputs"]["value"][0], memo)}
        for node_id, node in nodes.items()
        if node["class_type"] == "Preview"
    }


def needed(nodes: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    stack = [node_id for node_id, node in nodes.items() if node["class_type"] == "Preview"]
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(value[0] for value in nodes[node_id]["inputs"].values() if isinstance(value, list))
    return seen


def descendants(nodes: dict[str, Any], roots: set[str]) -> set[str]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for node_id, node in nodes.items():
            if node_id not in found and any(
                isinstance(value, list) and value[0] in found for value in node["inputs"].values()
            ):
                found.add(node_id)
                changed = True
    return found


def edit(nodes: dict[str, Any], node_id: str, value: float) -> dict[str, Any]:
    node = nodes[node_id]
    name = "value" if node["class_type"] == "Float" else "b"
    return {**nodes, node_id: {**node, "inputs": {**node["inputs"], name: value}}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_results_match_naive_evaluation_and_edits_rerun_exactly_the_descendants(graph: dict[str, Any]) -> None:
    engine = make_engine()
    nodes = graph["nodes"]
    CALLS.clear()
    result = engine.run(nodes)
    assert result.outputs == expected_outputs(nodes)
    assert sorted(CALLS) == sorted(n for n in needed(nodes) if not n.startswith("show_"))

    fresh = itertools.count(graph["fresh_start"])
    for targets in graph["edits"]:
        for node_id in targets:
            nodes = edit(nodes, node_id, float(next(fresh)) + 0.75)
        CALLS.clear()
        result = engine.run(nodes)
        assert result.outputs == expected_outputs(nodes)
        rerun = descendants(nodes, set(targets)) & needed(nodes)
        assert set(result.executed) == rerun
        assert sorted(CALLS) == sorted(n for n in rerun if not n.startswith("show_"))  # each exactly once
        CALLS.clear()
        assert engine.run(nodes).executed == [] and CALLS == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(1, 6))
def test_a_tiny_cache_never_serves_stale_values(graph: dict[str, Any], entries: int) -> None:
    engine = make_engine(max_entries=entries)
    nodes = graph["nodes"]
    assert engine.run(nodes).outputs == expected_outputs(nodes)
    fresh = itertools.count(graph["fresh_start"])
    for targets in graph["edits"]:
        for node_id in targets:
            nodes = edit(nodes, node_id, float(next(fresh)) + 0.75)
        result = engine.run(nodes)
        assert result.outputs == expected_outputs(nodes)
        assert set(result.executed) >= descendants(nodes, set(targets)) & needed(nodes)
        assert len(engine.cache) <= entries
