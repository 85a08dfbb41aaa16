"""Engine overhead: how much time the engine itself spends per node, with nodes that do nothing.

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_overhead.py [--repeats 15]

Graphs: chains of 10 / 100 / 1000 Add nodes, and a wide graph (one source fanned out to 512 Adds,
then summed back by a binary tree of 511 Adds). Columns, each the median over the repeats:
cold (cache and memoised plans cleared; includes validation and planning), an identical re-run,
a re-run with the first node changed (everything re-executes) and one with the last Add changed
(one Add and the Preview re-execute), and the cold time per node, wall clock and process CPU time
(the latter is what to compare on a machine busy with other work; process_time ticks coarsely,
so read it for the larger graphs).

A second table prices the copies a caller gets of cached results (so editing a result cannot change the
next run's): identical re-runs with the copies against the same runs handing out the cache's own objects,
interleaved in one loop so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from nodegraph.engine.api import Engine

Workflow = dict[str, dict[str, Any]]


def chain(length: int) -> tuple[Workflow, str, str]:
    """Float -> Add x length -> Preview; returns (workflow, first node id, last Add id)."""
    nodes: Workflow = {"0": {"class_type": "Float", "inputs": {"value": 1.0}}}
    for index in range(1, length + 1):
        nodes[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1.0}}
    nodes["out"] = {"class_type": "Preview", "inputs": {"value": [str(length), 0]}}
    return nodes, "0", str(length)


def fan(width: int) -> tuple[Workflow, str, str]:
    """One Float fanned out to `width` Adds, summed back pairwise; the last Add is the root of the sum."""
    nodes: Workflow = {"src": {"class_type": "Float", "inputs": {"value": 1.0}}}
    layer = []
    for index in range(width):
        node_id = f"f{index}"
        nodes[node_id] = {"class_type": "Add", "inputs": {"a": ["src", 0], "b": float(index)}}
        layer.append(node_id)
    counter = itertools.count()
    while len(layer) > 1:
        next_layer = []
        for left, right in zip(layer[::2], layer[1::2], strict=True):
            node_id = f"s{next(counter)}"
            nodes[node_id] = {"class_type": "Add", "inputs": {"a": [left, 0], "b": [right, 0]}}
            next_layer.append(node_id)
        layer = next_layer
    nodes["out"] = {"class_type": "Preview", "inputs": {"value": [layer[0], 0]}}
    return nodes, "src", layer[0]


def _set_constant(workflow: Workflow, node_id: str, value: float) -> Workflow:
    edited = copy.copy(workflow)
    node = edited[node_id]
    name = "value" if node["class_type"] == "Float" else "b"
    edited[node_id] = {**node, "inputs": {**node["inputs"], name: value}}
    return edited


def _median_ms(
    action: Callable[[], Any], prepare: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    times = []
    for _ in range(repeats):
        prepare()
        start = clock()
        action()
        times.append((clock() - start) * 1000)
    return statistics.median(times)


def measure(engine: Engine, workflow: Workflow, first: str, last: str, repeats: int) -> dict[str, float]:
    values = itertools.count(1000)
    engine.run(workflow)  # warm the interpreter's caches (imports, code paths)
    cold = _median_ms(lambda: engine.run(workflow), engine.clear_cache, repeats)
    # CPU time of this process: on a shared, loaded machine it shows the engine's own cost.
    cold_cpu = _median_ms(lambda: engine.run(workflow), engine.clear_cache, repeats, time.process_time)
    engine.run(workflow)
    rerun = _median_ms(lambda: engine.run(workflow), lambda: None, repeats)

    def edited_run(node_id: str) -> Callable[[], Any]:
        holder: dict[str, Workflow] = {}

        def prepare() -> None:
            holder["workflow"] = _set_constant(workflow, node_id, float(next(values)))

        def action() -> None:
            result = engine.run(holder["workflow"])
            assert result.executed, "an edit must re-execute something"

        return lambda: _median_ms(action, prepare, repeats)

    first_changed = edited_run(first)()
    last_changed = edited_run(last)()
    return {
        "nodes": len(workflow),
        "cold": cold,
        "rerun": rerun,
        "first": first_changed,
        "last": last_changed,
        "per_node": cold / len(workflow),
        "cpu_per_node": cold_cpu / len(workflow),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    engine = Engine("cpu", plugins=False)
    graphs = [
        ("chain 10", *chain(10)),
        ("chain 100", *chain(100)),
        ("chain 1000", *chain(1000)),
        ("fan 512 / tree", *fan(512)),
    ]
    columns = ("cold ms", "rerun ms", "first ms", "last ms", "ms/node", "cpu/node")
    header = f"{'graph':<16}{'nodes':>7}" + "".join(f"{column:>10}" for column in columns)
    print(header)
    print("-" * len(header))
    for name, workflow, first, last in graphs:
        row = measure(engine, workflow, first, last, args.repeats)
        print(
            f"{name:<16}{row['nodes']:>7}{row['cold']:>10.3f}{row['rerun']:>10.3f}"
            f"{row['first']:>10.3f}{row['last']:>10.3f}{row['per_node']:>10.4f}{row['cpu_per_node']:>10.4f}"
        )
    print()
    header = f"{'cached re-run':<24}{'copies ms':>11}{'shared ms':>11}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for name, workflow in (("chain 1000", chain(1000)[0]), ("fan 512 / tree", fan(512)[0]),
                           ("64x64 image preview", image_preview())):
        copies, shared = copy_cost(engine, workflow, 5 * args.repeats)
        print(f"{name:<24}{copies:>11.3f}{shared:>11.3f}{copies / shared:>8.3f}")


def copy_cost(engine: Engine, workflow: Workflow, repeats: int) -> tuple[float, float]:
    """Median cached re-run (ms) with caller copies and with the cache's own objects, interleaved."""
    from nodegraph.engine import executor

    real = executor.caller_copy
    engine.run(workflow)
    with_copies, shared = [], []
    for _ in range(repeats):
        for times, copier in ((with_copies, real), (shared, lambda value: value)):
            executor.caller_copy = copier
            start = time.perf_counter()
            engine.run(workflow)
            times.append((time.perf_counter() - start) * 1000)
    executor.caller_copy = real
    return statistics.median(with_copies), statistics.median(shared)


def image_preview() -> Workflow:
    """A cached 64x64 image behind a Preview: the result holds a tensor, which the caller gets a copy of."""
    return {
        "image": {"class_type": "RenderScene", "inputs": {"caption": "a red circle on a blue background"}},
        "out": {"class_type": "Preview", "inputs": {"value": ["image", 0]}},
    }


if __name__ == "__main__":
    main()
