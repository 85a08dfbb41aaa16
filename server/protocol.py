"""The websocket wire format: client message schemas (pydantic) and the server's message encoders.

Every text frame is a JSON object `{"type": T, "data": {...}}`. Client messages are parsed in two
steps, the envelope first and then the `data` of its type, so an error can name the field that is
wrong. The server answers a message it cannot use with an `error` message (see `error_message`)
and keeps the connection open.

Client -> server (each answered as noted):

    prompt       {"prompt": WORKFLOW, "params"?: {NAME: VALUE}, "prompt_id"?: ID}
                 -> prompt_queued {"prompt_id", "number"} | prompt_error {"error", "node_errors", "prompt_id"}
    interrupt    {"prompt_id"?: ID}            -> interrupt {"prompt_id", "interrupted": bool, "reason"?}
    queue        {"delete"?: [ID], "clear"?: bool}
                 -> queue {"queue_running", "queue_pending", "deleted"?, "not_deleted"?}
    history      {"prompt_id"?: ID, "max_items"?: N}   -> history {ID: entry, ...}
    object_info  {}                            -> object_info {NODE: catalogue entry, ...}
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from nodegraph.engine import events
from nodegraph.errors import ValidationIssue

# Prompt and client ids name files (history/<prompt_id>.json), so they are kept to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

# ComfyUI's binary event types and image formats (the first two big-endian u32 of a binary frame).
BINARY_PREVIEW_IMAGE = 1
IMAGE_FORMAT_PNG = 2

MESSAGE_TYPES = ("prompt", "interrupt", "queue", "history", "object_info")


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a string; forbid: a misspelt field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class Envelope(_Strict):
    type: str
    data: dict[str, Any] | None = None


class PromptRequest(_Strict):
    prompt: dict[str, Any]
    params: dict[str, Any] | None = None
    prompt_id: Identifier | None = None


class InterruptRequest(_Strict):
    prompt_id: Identifier | None = None


class QueueRequest(_Strict):
    delete: list[Identifier] | None = Field(default=None, max_length=100_000)
    clear: bool = False


class HistoryRequest(_Strict):
    prompt_id: Identifier | None = None
    max_items: int | None = Field(default=None, ge=1)


class ObjectInfoRequest(_Strict):
    pass


REQUEST_MODELS: dict[str, type[_Strict]] = {
    "prompt": PromptRequest,
    "interrupt": InterruptRequest,
    "queue": QueueRequest,
    "history": HistoryRequest,
    "object_info": ObjectInfoRequest,
}


class MessageError(Exception):
    """A client message the server cannot use; becomes an `error` message on the wire."""

    def __init__(self, code: str, message: str, request_type: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_type = request_type
        self.details = details


def parse_message(text: str) -> tuple[str, Any]:
    """(type, validated request model) for one text frame, or MessageError saying what is wrong."""
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise MessageError("invalid_json", "the message is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge integer literals
        raise MessageError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MessageError(
            "invalid_message",
            f'a message must be a JSON object {{"type": ..., "data": {{...}}}}, got {_json_kind(payload)}',
        )
    try:
        envelope = Envelope.model_validate(payload)
    except ValidationError as exc:
        raise MessageError("invalid_message", _describe(exc), details=_error_list(exc)) from None
    model = REQUEST_MODELS.get(envelope.type)
    if model is None:
        raise MessageError(
            "unknown_type",
            f"unknown message type {envelope.type[:64]!r}; known types: {', '.join(MESSAGE_TYPES)}",
            request_type=envelope.type[:64],
        )
    try:
        request = model.model_validate(envelope.data or {})
    except ValidationError as exc:
        raise MessageError(
            "invalid_fields", _describe(exc, "data"), request_type=envelope.type, details=_error_list(exc)
        ) from None
    return envelope.type, request


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [{"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"]} for error in exc.errors()[:20]]


def _describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        message = "unexpected field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{loc or 'message'}: {message}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def workflow_nodes(prompt: Mapping[str, Any]) -> Mapping[str, Any]:
    """The API-format nodes of a submitted workflow, bare or wrapped ({"nodes": ..., "params": ...})."""
    nodes = prompt.get("nodes")
    if isinstance(nodes, Mapping) and "class_type" not in nodes:
        return nodes
    return prompt


# ---------------------------------------------------------------- server -> client


def encode(type_: str, data: Mapping[str, Any]) -> bytes:
    """One text frame's bytes. Values JSON cannot hold (tensors, NaN) are described, never raised on."""
    message = {"type": type_, "data": data}
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(events.jsonable(message), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode()


def preview_frame(png: bytes) -> bytes:
    """A binary preview frame as ComfyUI sends it: u32 event type 1, u32 format 2 (PNG), the PNG."""
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, IMAGE_FORMAT_PNG) + png


def status_data(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return data


def error_message(exc: MessageError) -> bytes:
    data: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.request_type is not None:
        data["request_type"] = exc.request_type
    if exc.details is not None:
        data["details"] = exc.details
    return encode("error", data)


def prompt_error(
    code: str,
    message: str,
    *,
    prompt_id: str | None,
    issues: Iterable[ValidationIssue] = (),
    nodes: Mapping[str, Any] | None = None,
) -> bytes:
    """ComfyUI's prompt_error shape: {"error": {type, message, details, extra_info}, "node_errors"}.

    node_errors maps each node with a problem to {"errors": [...], "class_type", "dependent_outputs"};
    problems of the workflow as a whole appear only in error.extra_info.errors, which lists every
    issue in the CLI's `validate` format.
    """
    issues = list(issues)
    node_errors: dict[str, dict[str, Any]] = {}
    for issue in issues:
        if issue.node is None:
            continue
        entry = node_errors.get(issue.node)
        if entry is None:
            node = nodes.get(issue.node) if nodes is not None else None
            class_type = node.get("class_type") if isinstance(node, Mapping) else None
            entry = {"errors": [], "class_type": class_type if isinstance(class_type, str) else None}
            entry["dependent_outputs"] = []
            node_errors[issue.node] = entry
        entry["errors"].append(
            {
                "type": issue.type,
                "message": issue.message,
                "details": issue.where(),
                "extra_info": {"input_name": issue.input} if issue.input is not None else {},
            }
        )
    details = "\n".join(f"{issue.where()}: {issue.message} [{issue.type}]" for issue in issues)
    error = {
        "type": code,
        "message": message,
        "details": details,
        "extra_info": {"errors": [issue.model_dump() for issue in issues]},
    }
    return encode("prompt_error", {"error": error, "node_errors": node_errors, "prompt_id": prompt_id})
