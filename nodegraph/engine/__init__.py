"""The engine: workflows in, events and results out. Knows nothing about diffusion.

    workflow.py   reading workflow files, the envelope, params
    sockets.py    socket types: each name declared once with its value class and conventions
    node.py       the node protocol (Node, In, Out) and its checked view (NodeSpec)
    registry.py   class_type -> NodeSpec, built-ins and plugins
    validate.py   every problem in a workflow at once -> CompiledNodes
    plan.py       topological order, pruning, Merkle signatures
    prepare.py    a PreparedRun: params resolved, validated, planned (what validate reports, run runs)
    cache.py      signature -> outputs, LRU under per-device byte budgets
    executor.py   runs a plan against the cache, emitting events
    events.py     event names and the one place their payloads are built
    context.py    RunContext: what a node sees while it runs
    api.py        Engine (keeps registry, cache and plans across runs) and run()

Attribute access is lazy, so importing a submodule does not pull in torch through api.py.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {"Engine": "api", "run": "api", "resolve_device": "api", "RunResult": "executor",
            "PreparedRun": "prepare"}

if TYPE_CHECKING:
    from nodegraph.engine.api import Engine, resolve_device, run
    from nodegraph.engine.executor import RunResult
    from nodegraph.engine.prepare import PreparedRun

__all__ = ["Engine", "PreparedRun", "RunResult", "resolve_device", "run"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nodegraph.engine' has no attribute {name!r}")
    return getattr(import_module(f"nodegraph.engine.{module}"), name)
