"""nodegraph: a typed node-graph engine for text-conditional image synthesis.

`import nodegraph` stays cheap: the engine (and torch with it) loads on first use of an export.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # not imported from typing, which alone costs more than this module

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "nodegraph.engine",
    "run": "nodegraph.engine",
    "RunResult": "nodegraph.executor",
    "Node": "nodegraph.node",
    "In": "nodegraph.node",
    "Out": "nodegraph.node",
    "RunContext": "nodegraph.context",
    "Registry": "nodegraph.registry",
    "NodegraphError": "nodegraph.errors",
    "WorkflowError": "nodegraph.errors",
    "NodeExecutionError": "nodegraph.errors",
    "InputValueError": "nodegraph.errors",
    "Interrupted": "nodegraph.errors",
    "ConfigError": "nodegraph.errors",
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
    "RunContext",
    "RunResult",
    "ValidationIssue",
    "WorkflowError",
    "run",
]

if TYPE_CHECKING:
    from typing import Any

    from nodegraph.context import RunContext
    from nodegraph.engine import Engine, run
    from nodegraph.errors import (
        ConfigError,
        InputValueError,
        Interrupted,
        NodeExecutionError,
        NodegraphError,
        ValidationIssue,
        WorkflowError,
    )
    from nodegraph.executor import RunResult
    from nodegraph.node import In, Node, Out
    from nodegraph.registry import Registry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nodegraph' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
