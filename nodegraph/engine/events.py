"""Event names and payload helpers; payloads follow ComfyUI's websocket messages.

Every event is delivered as `on_event(type, data)` and every `data` carries "prompt_id":

    execution_start        {"prompt_id", "timestamp"}
    execution_cached       {"nodes": [ids served from cache], "prompt_id", "timestamp"}
    executing              {"node", "display_node", "prompt_id"}     (node is None last of all)
    progress               {"value", "max", "node", "prompt_id", "preview"?: PIL.Image}
    executed               {"node", "display_node", "output": {JSON-friendly UI values}, "prompt_id"}
    execution_success      {"prompt_id", "timestamp"}
    execution_error        {"prompt_id", "node_id", "node_type", "executed", "exception_message",
                            "exception_type", "traceback": [lines], "timestamp"}
    execution_interrupted  {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
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

EventCallback = Callable[[str, dict[str, Any]], None]


def timestamp() -> int:
    """Milliseconds since the epoch, as ComfyUI stamps its events."""
    return int(time.time() * 1000)


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
