"""Event names and the one place their payloads are built; payloads follow ComfyUI's websocket messages.

Every event is delivered as `on_event(type, data)` and every `data` carries "prompt_id" (ComfyUI's name
for the id of a run). The executor and the server both build events with the functions below, each
returning `(type, data)`, so a payload cannot drift between the two:

    execution_start        {"prompt_id", "timestamp"}
    execution_cached       {"nodes": [ids served from cache], "prompt_id", "timestamp"}
    executing              {"node", "display_node", "prompt_id"}     (node is None last of all)
    progress               {"value", "max", "node", "prompt_id", "preview"?: PIL.Image}
    executed               {"node", "display_node", "output": {JSON-friendly UI values}, "prompt_id"}
    execution_success      {"prompt_id", "timestamp"}
    execution_error        {"prompt_id", "node_id", "node_type", "executed", "exception_message",
                            "exception_type", "traceback": [lines], "current_inputs", "timestamp",
                            "errors"?: [validation issues, when the run stopped before its first node]}
    execution_interrupted  {"prompt_id", "node_id", "node_type", "executed", "timestamp"}

`progress_state` {"prompt_id", "nodes": {ID: {"value", "max", "state", "node_id", "prompt_id", "display_node_id",
"parent_node_id", "real_node_id"}}} is ComfyUI's summary of node states; the engine does not emit it, the server
builds it from the events above with `progress_state` below. And one that is not a ComfyUI JSON message:
`image` {"node", "prompt_id", "image": PIL.Image}, a full image a node sends to the client
(SaveImageWebsocket); the server sends it as a binary image frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
EXECUTED = "executed"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"
IMAGE = "image"
PROGRESS_STATE = "progress_state"

EventCallback = Callable[[str, dict[str, Any]], None]


Event = tuple[str, dict[str, Any]]


def timestamp() -> int:
    """Milliseconds since the epoch, as ComfyUI stamps its events."""
    return int(time.time() * 1000)


def execution_start(prompt_id: str) -> Event:
    return EXECUTION_START, {"prompt_id": prompt_id, "timestamp": timestamp()}


def execution_cached(prompt_id: str, nodes: list[str]) -> Event:
    return EXECUTION_CACHED, {"nodes": nodes, "prompt_id": prompt_id, "timestamp": timestamp()}


def executing(prompt_id: str, node: str | None) -> Event:
    """A node starts (or, with node None, the run is over: always the last event of a run)."""
    return EXECUTING, {"node": node, "display_node": node, "prompt_id": prompt_id}


def progress(prompt_id: str, node: str, value: float, max: float, preview: Any = None) -> Event:
    data: dict[str, Any] = {"value": value, "max": max, "node": node, "prompt_id": prompt_id}
    if preview is not None:
        data["preview"] = preview
    return PROGRESS, data


def image(prompt_id: str, node: str, picture: Any) -> Event:
    return IMAGE, {"node": node, "prompt_id": prompt_id, "image": picture}


def node_progress(prompt_id: str, node: str, state: str, value: float = 0, max: float = 1) -> dict[str, Any]:
    """One node's entry in a progress_state message; state is pending, running, finished or error."""
    return {
        "value": value,
        "max": max,
        "state": state,
        "node_id": node,
        "prompt_id": prompt_id,
        "display_node_id": node,
        "parent_node_id": None,
        "real_node_id": node,
    }


def progress_state(prompt_id: str, nodes: Mapping[str, Mapping[str, Any]]) -> Event:
    """ComfyUI's progress_state: the state of the run's nodes (entries from node_progress)."""
    return PROGRESS_STATE, {"prompt_id": prompt_id, "nodes": {key: dict(value) for key, value in nodes.items()}}


def executed(prompt_id: str, node: str, output: Mapping[str, Any]) -> Event:
    return EXECUTED, {"node": node, "display_node": node, "output": jsonable(output), "prompt_id": prompt_id}


def execution_success(prompt_id: str) -> Event:
    return EXECUTION_SUCCESS, {"prompt_id": prompt_id, "timestamp": timestamp()}


def execution_error(
    prompt_id: str,
    exception: BaseException,
    *,
    node_id: str | None = None,
    node_type: str | None = None,
    executed: list[str] | None = None,
    traceback: list[str] | None = None,
    current_inputs: Mapping[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Event:
    data: dict[str, Any] = {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": list(executed or []),
        "exception_message": str(exception),
        "exception_type": f"{type(exception).__module__}.{type(exception).__qualname__}",
        "traceback": list(traceback or []),
        "current_inputs": jsonable(current_inputs or {}),
        "timestamp": timestamp(),
    }
    if errors is not None:
        data["errors"] = errors
    return EXECUTION_ERROR, data


def execution_interrupted(
    prompt_id: str, node_id: str | None = None, node_type: str | None = None, executed: list[str] | None = None
) -> Event:
    return EXECUTION_INTERRUPTED, {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": list(executed or []),
        "timestamp": timestamp(),
    }


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly rendering of a node value: tensors and models become short descriptions."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= 6:
        return _describe_object(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [jsonable(item, depth + 1) for item in value[:64]]
        if len(value) > 64:
            items.append(f"... {len(value) - 64} more")
        return items
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return {
            "type": type(value).__name__,
            "shape": [int(size) for size in shape],
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(getattr(value, "device", "cpu")),
        }
    return _describe_object(value)


def _describe_object(value: Any) -> dict[str, str]:
    text = repr(value)
    if len(text) > 200:
        text = text[:197] + "..."
    return {"type": type(value).__name__, "repr": text}
