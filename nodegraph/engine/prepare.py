"""A PreparedRun: a workflow with its params applied, every node validated and its plan built.

This is the one path from a workflow to something runnable. `Engine.validate` reports on it,
`Engine.run` executes it, and the CLI (every line of a params file, before the first run) and the
server (at submission, then in its worker) hand the prepared object from one to the other, so a
workflow is never parsed, checked or planned twice. Plans are memoised by content (`PlanMemo`), so
re-running an unchanged workflow with other param values skips validation and planning.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegraph.engine.plan import Plan, build_plan
from nodegraph.engine.validate import validate_nodes
from nodegraph.engine.workflow import Workflow, apply_params, load_workflow
from nodegraph.errors import WorkflowError

if TYPE_CHECKING:
    from nodegraph.engine.registry import Registry

WorkflowSource = Workflow | Mapping[str, Any] | Path | str


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """What a run executes: API-format nodes with params applied (what SaveImage embeds in its PNGs),
    the param values converted to their inputs' types, and the plan (order, compiled nodes, outputs)."""

    nodes: dict[str, Any]
    params: dict[str, Any]
    plan: Plan


class PlanMemo:
    """Plans of recently prepared workflows by content, least recently used dropped first (thread-safe:
    the server validates on other threads while a run is in progress)."""

    def __init__(self, size: int) -> None:
        self._plans: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Plan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key: tuple[Any, ...], plan: Plan) -> None:
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


def prepare(
    workflow: WorkflowSource,
    params: Mapping[str, Any] | None,
    outputs: list[str] | None,
    registry: Registry,
    memo: PlanMemo,
) -> PreparedRun:
    """Load the workflow, apply params, validate and plan; WorkflowError lists every problem at once."""
    loaded = load_workflow(workflow)
    nodes, resolved, issues = apply_params(loaded, params, registry)
    key = content_key(nodes, outputs, registry.version)
    plan = memo.get(key) if key is not None and not issues else None
    if plan is None:
        compiled, node_issues = validate_nodes(nodes, registry)
        plan, plan_issues = build_plan(compiled, outputs)
        problems = node_issues + plan_issues + issues
        if problems or plan is None:
            raise WorkflowError(problems)
        if key is not None:
            memo.put(key, plan)
    return PreparedRun(nodes, resolved, plan)


def content_key(nodes: Mapping[str, Any], outputs: list[str] | None, version: int) -> tuple[Any, ...] | None:
    """A key under which equal workflows (same nodes, outputs and registry version) share one plan."""
    # marshal is several times faster than json.dumps and exact about types (1, 1.0 and True
    # differ, str subclasses are refused). Format 0 writes no back-references, so equal
    # workflows give equal bytes whatever objects they share; unequal ones can never collide.
    try:
        content = marshal.dumps(nodes, 0)
    except (ValueError, TypeError, RecursionError):
        return None  # holds objects marshal cannot write: validate it every time
    return (version, tuple(outputs) if outputs is not None else None, content)
