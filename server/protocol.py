"""The wire format: websocket message schemas, ComfyUI's error shapes (bounded), binary frames.

Every text frame is a JSON object `{"type": T, "data": {...}}`. Client messages are parsed in two
steps, the envelope first and then the `data` of its type, so an error can name the field that is
wrong. The server answers a message it cannot use with an `error` message and keeps the connection open.

Client -> server (each answered as noted):

    feature_flags {FLAG: VALUE, ...}           -> feature_flags {the server's flags}
    prompt       {"prompt": WORKFLOW, "params"?, "prompt_id"?, "extra_data"?, "front"?, "number"?,
                  "partial_execution_targets"?}
                 -> prompt_queued {"prompt_id", "number", "node_errors"} | prompt_error {"error", "node_errors",
                    "prompt_id"}
    interrupt    {"prompt_id"?: ID}            -> interrupt {"prompt_id", "interrupted": bool, "reason"?}
    queue        {"delete"?: [ID], "clear"?: bool}
                 -> queue {"queue_running", "queue_pending", "deleted"?, "not_deleted"?}
    history      {"prompt_id"?: ID, "max_items"?: N, "offset"?: N}   -> history {ID: entry, ...}
    object_info  {}                            -> object_info {NODE: ComfyUI node info, ...}

Error reports are bounded: however many problems a prompt has, a reply lists at most MAX_REPORTED issues
(each message at most MAX_MESSAGE characters) and says how many were left out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from nodegraph.errors import ValidationIssue
from nodegraph.server import jsonio

# Prompt and client ids name files (history/<prompt_id>.json), so they are kept to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

# ComfyUI's binary event types (the first big-endian u32 of a binary frame) and image formats.
BINARY_PREVIEW_IMAGE = 1
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMAT_PNG = 2

MAX_REPORTED = 100  # issues listed in one error reply
MAX_MESSAGE = 600  # characters of one issue message
MAX_FLAGS_BYTES = 16 * 1024  # a client's feature_flags

MESSAGE_TYPES = ("feature_flags", "prompt", "interrupt", "queue", "history", "object_info")

# What this server tells clients it supports (GET /features and the feature_flags answer).
SERVER_FEATURES: dict[str, Any] = {
    "supports_preview_metadata": True,
    "max_upload_size": 0,  # filled in from the config
    "extension": {"manager": {"supports_v4": False}},
    "node_replacements": False,
}


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a string; forbid: a misspelt field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class Envelope(_Strict):
    type: str
    data: dict[str, Any] | None = None


class ExtraData(BaseModel):
    # ComfyUI clients put more here (auth tokens, client_id); only extra_pnginfo is used.
    model_config = ConfigDict(extra="allow", strict=True)
    extra_pnginfo: dict[str, Any] | None = None
    client_id: Identifier | None = None


class PromptRequest(_Strict):
    prompt: dict[str, Any]
    params: dict[str, Any] | None = None
    prompt_id: Identifier | None = None
    client_id: Identifier | None = None
    extra_data: ExtraData | None = None
    front: bool | None = None
    number: float | int | None = None
    partial_execution_targets: list[str] | None = Field(default=None, max_length=10_000)


class InterruptRequest(_Strict):
    prompt_id: Identifier | None = None


class QueueRequest(_Strict):
    delete: list[Identifier] | None = Field(default=None, max_length=100_000)
    clear: bool = False


class HistoryRequest(_Strict):
    prompt_id: Identifier | None = None
    max_items: int | None = Field(default=None, ge=1)
    offset: int | None = Field(default=None, ge=0)


class ObjectInfoRequest(_Strict):
    pass


class FeatureFlags(BaseModel):
    model_config = ConfigDict(extra="allow")


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "feature_flags": FeatureFlags,
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
        payload = jsonio.parse(text)
    except jsonio.JsonInputError as exc:
        raise MessageError("invalid_json", f"the message is {exc}" if "JSON" in str(exc) else str(exc)) from None
    if not isinstance(payload, dict):
        raise MessageError(
            "invalid_message",
            f'a message must be a JSON object {{"type": ..., "data": {{...}}}}, got {json_kind(payload)}',
        )
    try:
        envelope = Envelope.model_validate(payload)
    except ValidationError as exc:
        raise MessageError("invalid_message", describe(exc), details=error_list(exc)) from None
    model = REQUEST_MODELS.get(envelope.type)
    if model is None:
        raise MessageError(
            "unknown_type",
            f"unknown message type {envelope.type[:64]!r}; known types: {', '.join(MESSAGE_TYPES)}",
            request_type=envelope.type[:64],
        )
    return envelope.type, validate_request(model, envelope.data or {}, envelope.type)


def validate_request(model: type[BaseModel], data: Any, request_type: str | None = None) -> Any:
    """`data` as `model`, or MessageError("invalid_fields") naming the fields that are wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MessageError(
            "invalid_fields", describe(exc, "data" if request_type else ""), request_type=request_type,
            details=error_list(exc),
        ) from None


def json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"loc": ".".join(str(part) for part in error["loc"])[:200], "msg": error["msg"][:MAX_MESSAGE]}
        for error in exc.errors()[:20]
    ]


def describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")[:200]
        message = "unexpected field" if error["type"] == "extra_forbidden" else error["msg"][:MAX_MESSAGE]
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


def encode(type_: str, data: Mapping[str, Any]) -> str:
    """One text frame. Values JSON cannot hold (tensors, NaN) are described, never raised on."""
    return jsonio.dumps({"type": type_, "data": data})


def preview_frame(png: bytes) -> bytes:
    """A plain preview frame as ComfyUI sends it: u32 event 1, u32 format 2 (PNG), the PNG."""
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, IMAGE_FORMAT_PNG) + png


def preview_with_metadata_frame(png: bytes, prompt_id: str, node: str) -> bytes:
    """ComfyUI's newer preview event 4: u32 event, u32 length of a JSON header naming the node, header, PNG."""
    header = jsonio.dump_bytes(
        {
            "node_id": node,
            "prompt_id": prompt_id,
            "display_node_id": node,
            "parent_node_id": None,
            "real_node_id": node,
            "image_type": "image/png",
        }
    )
    return struct.pack(">II", BINARY_PREVIEW_IMAGE_WITH_METADATA, len(header)) + header + png


def status_data(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return data


def error_message(exc: MessageError) -> str:
    data: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.request_type is not None:
        data["request_type"] = exc.request_type
    if exc.details is not None:
        data["details"] = exc.details
    return encode("error", data)


# ---------------------------------------------------------------- ComfyUI's validation error shape

# nodegraph's issue codes -> ComfyUI's names for the same problem (the frontend and clients match on these).
_COMFY_TYPES = {
    "missing_required_input": "required_input_missing",
    "malformed_link": "bad_linked_input",
    "link_to_missing_node": "bad_linked_input",
    "output_index_out_of_range": "bad_linked_input",
    "type_mismatch": "return_type_mismatch",
    "wrong_type": "invalid_input_type",
    "not_in_choices": "value_not_in_list",
    "unknown_class_type": "invalid_prompt",
    "missing_class_type": "invalid_prompt",
    "invalid_class_type": "invalid_prompt",
    "no_output_node": "prompt_no_outputs",
}


def comfy_type(issue: ValidationIssue) -> str:
    if issue.type == "out_of_range":
        return "value_smaller_than_min" if "below the minimum" in issue.message else "value_bigger_than_max"
    return _COMFY_TYPES.get(issue.type, issue.type)


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prompt_error_body(
    code: str,
    message: str,
    *,
    issues: Iterable[ValidationIssue] = (),
    nodes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """ComfyUI's `{"error": {type, message, details, extra_info}, "node_errors": {...}}`, bounded in size.

    node_errors maps each node with a problem to {"errors": [...], "class_type", "dependent_outputs"}, each
    error {type (ComfyUI's name), message, details, extra_info: {input_name, nodegraph_type}}; problems of the
    workflow as a whole are in error.extra_info.errors, which lists issues in the CLI's `validate` format.
    At most MAX_REPORTED issues are listed; error.extra_info.omitted counts the rest.
    """
    listed: list[ValidationIssue] = []
    total = 0
    for issue in issues:
        total += 1
        if len(listed) < MAX_REPORTED:
            listed.append(issue)
    node_errors: dict[str, dict[str, Any]] = {}
    for issue in listed:
        if issue.node is None:
            continue
        node_id = _clip(issue.node, 200)
        entry = node_errors.get(node_id)
        if entry is None:
            node = nodes.get(issue.node) if nodes is not None else None
            class_type = node.get("class_type") if isinstance(node, Mapping) else None
            entry = {
                "errors": [],
                "class_type": _clip(class_type, 200) if isinstance(class_type, str) else None,
                "dependent_outputs": [],
            }
            node_errors[node_id] = entry
        extra: dict[str, Any] = {"nodegraph_type": issue.type}
        if issue.input is not None:
            extra["input_name"] = _clip(issue.input, 200)
        entry["errors"].append(
            {
                "type": comfy_type(issue),
                "message": _clip(issue.message),
                # nodegraph's message again: the frontend shows its own title for ComfyUI's types, and this as detail
                "details": _clip(issue.message),
                "extra_info": extra,
            }
        )
    details = "\n".join(_clip(f"{issue.where()}: {issue.message} [{issue.type}]") for issue in listed)
    extra_info: dict[str, Any] = {
        "errors": [
            {
                "node": None if issue.node is None else _clip(issue.node, 200),
                "input": None if issue.input is None else _clip(issue.input, 200),
                "type": issue.type,
                "message": _clip(issue.message),
            }
            for issue in listed
        ]
    }
    if total > len(listed):
        extra_info["omitted"] = total - len(listed)
        details += f"\n... and {total - len(listed)} more problems"
    error = {"type": code, "message": message, "details": details, "extra_info": extra_info}
    return {"error": error, "node_errors": node_errors}


def invalid_prompt_body(issues: list[ValidationIssue], nodes: Mapping[str, Any]) -> dict[str, Any]:
    """The 400 reply for a prompt that failed validation, typed as ComfyUI types it."""
    count = len(issues)
    node_issues = [issue for issue in issues if issue.node is not None]
    if node_issues and all(comfy_type(issue) == "invalid_prompt" for issue in node_issues):
        code, message = "invalid_prompt", issues[0].message  # ComfyUI: a node class that does not exist
    elif any(issue.node is not None for issue in issues):
        code, message = "prompt_outputs_failed_validation", "Prompt outputs failed validation"
    else:
        code = comfy_type(issues[0]) if issues else "invalid_prompt"
        message = issues[0].message if count == 1 else "Invalid prompt"
    return prompt_error_body(
        code, f"{message} ({count} problem{'s' if count != 1 else ''})", issues=issues, nodes=nodes
    )
