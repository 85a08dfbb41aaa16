"""Executing a plan: decide what the cache already covers, run the rest in order, emit events.

Only nodes whose outputs are needed and missing from the cache run: the decision walks back from the
requested output nodes and stops at every cached node, so an identical re-run executes nothing and a
changed input re-executes exactly that node and what depends on it. Values needed later in the run
are held locally (the cache may evict them meanwhile) and dropped once their last consumer has run.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.engine import events
from nodegraph.engine.cache import CacheEntry, OutputCache, tensor_bytes
from nodegraph.engine.context import RunContext, RunState
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.plan import Plan
from nodegraph.engine.sockets import SocketType
from nodegraph.errors import InputValueError, Interrupted, NodeExecutionError

torch = lazy_import("torch")  # only values that hold tensors need it


@dataclass
class RunResult:
    """What a run produced. `outputs[node_id]` is an output node's recorded values (real objects)."""

    prompt_id: str
    outputs: dict[str, dict[str, Any]]
    files: list[Path]
    executed: list[str]
    cached: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (tensors described by shape and dtype)."""
        return {
            "prompt_id": self.prompt_id,
            "status": "success",
            "params": events.jsonable(self.params),
            "outputs": {node_id: events.jsonable(ui) for node_id, ui in self.outputs.items()},
            "files": [str(path) for path in self.files],
            "executed": len(self.executed),
            "cached": len(self.cached),
            "seconds": round(self.seconds, 6),
        }


def execute(plan: Plan, signatures: dict[str, str], cache: OutputCache, state: RunState) -> RunResult:
    started = time.perf_counter()
    emit = state.emit
    prompt_id = state.prompt_id
    nodes = plan.nodes
    if emit is not None:
        emit(*events.execution_start(prompt_id))
    entries, to_run, cached = _find_work(plan, signatures, cache)

    # How many pending consumers each value has, so it can be released after the last one.
    consumers: dict[str, int] = {}
    for node_id in to_run:
        for source, _, _ in nodes[node_id].links.values():
            consumers[source] = consumers.get(source, 0) + 1
    values: dict[str, tuple[Any, ...]] = {
        node_id: entries[node_id].outputs for node_id in consumers if node_id in entries
    }

    if emit is not None:
        emit(*events.execution_cached(prompt_id, cached))
        for node_id in plan.outputs:
            entry = entries.get(node_id)
            if entry is not None and entry.ui is not None:
                emit(*events.executed(prompt_id, node_id, entry.ui))

    executed: list[str] = []
    produced: dict[str, CacheEntry] = {}  # this run's results by signature: identical nodes run once
    manage_models = cache.manages(state.device)  # models offloaded to make room come back before use
    current: tuple[str, str] | None = None
    finished = False
    try:
        for node_id in plan.order:
            if node_id not in to_run:
                continue
            node = nodes[node_id]
            spec = node.spec
            current = (node_id, spec.name)
            if state.interrupted():
                raise Interrupted(f"interrupted before node {node_id!r} ({spec.name})")
            signature = signatures[node_id]
            entry = produced.get(signature)
            if entry is None:
                if manage_models and node.links:
                    sources = [source for source, _, _ in node.links.values()]
                    cache.prepare_inputs([values[source] for source in sources], state.device,
                                         {signatures[source] for source in sources})
                entry = _run_node(node_id, node, values, state, emit, executed)
                cache.put(signature, entry)
                produced[signature] = entry
                executed.append(node_id)
            else:
                cached.append(node_id)
            entries[node_id] = entry
            if node_id in consumers:
                values[node_id] = entry.outputs
            if entry.ui is not None and emit is not None:
                emit(*events.executed(prompt_id, node_id, entry.ui))
            for source, _, _ in node.links.values():
                left = consumers[source] - 1
                consumers[source] = left
                if left == 0:
                    values.pop(source, None)
        finished = True
    except (Interrupted, KeyboardInterrupt):
        if emit is not None:
            node_id, node_type = current if current is not None else (None, None)
            emit(*events.execution_interrupted(prompt_id, node_id, node_type, executed))
        raise
    finally:
        if emit is not None and not finished:
            emit(*events.executing(prompt_id, None))

    outputs: dict[str, dict[str, Any]] = {}
    files: list[Path] = []
    for node_id in plan.outputs:
        entry = entries[node_id]
        # The caller gets copies, not the cache's objects: editing a result must not change the next run's.
        outputs[node_id] = caller_copy(entry.ui) if entry.ui is not None else {}
        if entry.files:
            files.extend(entry.files)
    if emit is not None:
        emit(*events.execution_success(prompt_id))
        emit(*events.executing(prompt_id, None))
    return RunResult(
        prompt_id=prompt_id,
        outputs=outputs,
        files=files,
        executed=executed,
        cached=cached,
        params=dict(state.params),
        seconds=time.perf_counter() - started,
    )


def _find_work(
    plan: Plan, signatures: dict[str, str], cache: OutputCache
) -> tuple[dict[str, CacheEntry], set[str], list[str]]:
    """(cached entries the run reads, nodes that must run, planned nodes found in the cache)."""
    nodes = plan.nodes
    outputs = set(plan.outputs)
    entries: dict[str, CacheEntry] = {}
    to_run: set[str] = set()
    stack = list(plan.outputs)
    while stack:  # walk back from the outputs, stopping at cached nodes
        node_id = stack.pop()
        if node_id in to_run or node_id in entries:
            continue
        entry = cache.get(signatures[node_id])
        if entry is not None and entry.files and node_id in outputs and not all(p.exists() for p in entry.files):
            # Someone deleted what this output wrote: produce it again rather than report ghosts.
            cache.discard(signatures[node_id])
            entry = None
        if entry is not None:
            entries[node_id] = entry
            continue
        to_run.add(node_id)
        stack.extend([source for source, _, _ in nodes[node_id].links.values()])
    # Everything the workflow still has cached counts as in use, so a model loaded upstream of a
    # cached output stays resident while the workflow keeps being re-run.
    touch = cache.touch
    cached = [node_id for node_id in plan.order if node_id not in to_run and touch(signatures[node_id])]
    return entries, to_run, cached


def _run_node(
    node_id: str,
    node: Any,
    values: dict[str, tuple[Any, ...]],
    state: RunState,
    emit: events.EventCallback | None,
    executed: list[str],
) -> CacheEntry:
    spec = node.spec
    if emit is not None:
        emit(*events.executing(state.prompt_id, node_id))
    if node.links:
        kwargs = dict(node.constants)
        for name, (source, index, convert) in node.links.items():
            value = values[source][index]
            kwargs[name] = convert(value) if convert is not None else value
    else:
        kwargs = node.constants
    ctx = RunContext(state, node_id, spec.name)
    try:
        for name in node.bounded_links:  # a linked value must respect the range a constant is held to
            _check_bounds(spec, name, kwargs[name], node.links[name][0])
        result = spec.cls().run(ctx, **kwargs)
        result = _check_result(spec, result)
    except Interrupted:
        raise
    except Exception as exc:
        lines = traceback.format_exception(exc)
        if emit is not None:
            emit(*events.execution_error(state.prompt_id, exc, node_id=node_id, node_type=spec.name,
                                         executed=executed, traceback=lines, current_inputs=kwargs))
        raise NodeExecutionError(node_id, spec.name, exc, lines, _blamed_input(spec, exc)) from exc
    # Recorded UI values are real objects (Preview keeps the tensor itself), so they count too.
    nbytes = tensor_bytes(result) if ctx.ui is None else tensor_bytes((result, ctx.ui))
    return CacheEntry(result, ctx.ui, ctx.files, nbytes)


def _check_result(spec: Any, result: Any) -> tuple[Any, ...]:
    """The node's outputs as a tuple, each checked against its socket type's value class."""
    expected = len(spec.outputs)
    if result is None and expected == 0:
        return ()
    if isinstance(result, (tuple, list)) and len(result) == expected:
        for index, (out, value) in enumerate(zip(spec.outputs, result, strict=True)):
            problem = out.type.check(value) if isinstance(out.type, SocketType) else None
            if problem is not None:
                raise TypeError(f"{spec.name}.run returned a wrong value for output {index} ({out.name}): {problem}")
        return tuple(result)
    declared = ", ".join(out.type for out in spec.outputs) or "nothing"
    raise TypeError(
        f"{spec.name}.run returned {type(result).__name__}"
        f"{f' of length {len(result)}' if isinstance(result, (tuple, list)) else ''}; "
        f"it must return a tuple of {expected} value(s) ({declared})"
    )


def _check_bounds(spec: Any, name: str, value: Any, source: str) -> None:
    problem = spec.inputs[name].bounds_problem(value)
    if problem is not None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputValueError(name, f"{shown} arrived from node {source!r}{problem[1]}", problem[0])


def _blamed_input(spec: Any, exc: BaseException) -> str | None:
    """The node input an InputValueError names (library errors name the argument of the same name)."""
    name = getattr(exc, "input", None) if isinstance(exc, InputValueError) else None
    return name if name in spec.inputs else None


def caller_copy(value: Any, depth: int = 0) -> Any:
    """`value` with its containers, dataclasses and tensors copied; other objects (models) are shared, and a
    caller must treat them as read-only. Scalars and strings are immutable already."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, Path)) or depth > 16:
        return value
    if isinstance(value, dict):
        return {key: caller_copy(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(caller_copy(item, depth + 1) for item in value)
    if isinstance(value, torch.Tensor):
        return value.clone()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: caller_copy(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **fields)
    return value
