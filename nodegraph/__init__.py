"""nodegraph: a typed node-graph engine for text-conditional image synthesis.

`import nodegraph` stays cheap: the engine (and torch with it) loads on first use of an export.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # not imported from typing, which alone costs more than this module

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "nodegraph.engine.api",
    "run": "nodegraph.engine.api",
    "RunResult": "nodegraph.engine.executor",
    "Node": "nodegraph.engine.node",
    "In": "nodegraph.engine.node",
    "Out": "nodegraph.engine.node",
    "RunContext": "nodegraph.engine.context",
    "Registry": "nodegraph.engine.registry",
    "NodegraphError": "nodegraph.errors",
    "WorkflowError": "nodegraph.errors",
    "NodeExecutionError": "nodegraph.errors",
    "InputValueError": "nodegraph.errors",
    "Interrupted": "nodegraph.errors",
    "ConfigError": "nodegraph.errors",
    "ReentrantRunError": "nodegraph.errors",
    "ValidationIssue": "nodegraph.errors",
}

__all__ = [
    "ConfigError",
    "Engine",
    "In",
    "InputValueError",
    "Interrupted",
    "Node",
    "NodeExecutionError",
    "NodegraphError",
    "Out",
    "Registry",
    "ReentrantRunError",
    "RunContext",
    "RunResult",
    "ValidationIssue",
    "WorkflowError",
    "run",
]

if TYPE_CHECKING:
    from typing import Any

    from nodegraph.engine.api import Engine, run
    from nodegraph.engine.context import RunContext
    from nodegraph.engine.executor import RunResult
    from nodegraph.engine.node import In, Node, Out
    from nodegraph.engine.registry import Registry
    from nodegraph.errors import (
        ConfigError,
        InputValueError,
        Interrupted,
        NodeExecutionError,
        NodegraphError,
        ReentrantRunError,
        ValidationIssue,
        WorkflowError,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nodegraph' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
