"""Workflow files: reading them safely, the (pydantic) envelope, and applying params.

A workflow is ComfyUI's API format, `{ID: {"class_type", "inputs", "_meta"?}}`, either bare or
wrapped as `{"nodes": {...}, "params": {NAME: {"node", "input", "description"?}}, "meta": {...}}`.
Only the envelope goes through pydantic; the nodes themselves are checked by plain code in
validate.py, which is both faster and able to report every problem with a stable code.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from nodegraph.engine import sockets
from nodegraph.errors import ValidationIssue, WorkflowError

if TYPE_CHECKING:
    from nodegraph.engine.registry import Registry

# Workflows are a few kilobytes; the cap keeps a wrong path (a model, a video) from eating memory.
MAX_WORKFLOW_BYTES = 32 * 1024 * 1024


class ParamSpec(BaseModel):
    """A user-facing knob: sets `input` of node `node` (`--param NAME=VALUE`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    node: str
    input: str
    description: str | None = None


class WorkflowFile(BaseModel):
    """The wrapped workflow form."""

    model_config = ConfigDict(extra="forbid", strict=True)

    nodes: dict[str, Any]
    params: dict[str, ParamSpec] = {}
    meta: dict[str, Any] = {}


@dataclass(slots=True)
class Workflow:
    """A workflow after its envelope was checked: API-format nodes (not yet validated) and params."""

    nodes: dict[str, Any]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def issue(type_: str, message: str, node: str | None = None, input: str | None = None) -> ValidationIssue:
    return ValidationIssue(node=node, input=input, type=type_, message=message)


def read_json_file(path: Path | str, *, what: str = "workflow", max_bytes: int | None = None) -> Any:
    """Read and parse a JSON file, turning every way it can be unusable into a WorkflowError."""
    return parse_json_bytes(read_file_bytes(path, what=what, max_bytes=max_bytes), source=str(path))


def read_file_bytes(path: Path | str, *, what: str = "workflow", max_bytes: int | None = None) -> bytes:
    """A file's bytes, or a WorkflowError saying why it cannot be used (missing, a directory, too big)."""
    path = Path(path)
    if max_bytes is None:
        max_bytes = MAX_WORKFLOW_BYTES
    try:
        info = path.stat()
    except FileNotFoundError:
        raise WorkflowError([issue("file_not_found", f"{what} file {str(path)!r} does not exist")]) from None
    except OSError as exc:
        raise WorkflowError([issue("unreadable_file", f"cannot read {what} file {str(path)!r}: {exc}")]) from None
    if stat.S_ISDIR(info.st_mode):
        raise WorkflowError([issue("not_a_file", f"{str(path)!r} is a directory; give a {what} JSON file")])
    if not stat.S_ISREG(info.st_mode):
        raise WorkflowError([issue("not_a_file", f"{str(path)!r} is not a regular file")])
    if info.st_size > max_bytes:
        raise WorkflowError([_too_large(path, info.st_size, max_bytes, what)])
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)  # the file may grow between stat and read
    except OSError as exc:
        raise WorkflowError([issue("unreadable_file", f"cannot read {what} file {str(path)!r}: {exc}")]) from None
    if len(raw) > max_bytes:
        raise WorkflowError([_too_large(path, len(raw), max_bytes, what)])
    return raw


def _too_large(path: Path, size: int, limit: int, what: str) -> ValidationIssue:
    return issue(
        "file_too_large",
        f"{str(path)!r} is {size} bytes; {what} files are limited to {limit} bytes (is this the right file?)",
    )


def decode_text(raw: bytes, *, source: str = "<input>") -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowError(
            [
                issue(
                    "invalid_encoding",
                    f"{source} is not UTF-8 text (bad byte at offset {exc.start}); is it binary?",
                )
            ]
        ) from None


def parse_json_bytes(raw: bytes, *, source: str = "<input>") -> Any:
    return parse_json_text(decode_text(raw, source=source), source=source)


def parse_json_text(text: str, *, source: str = "<input>") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            [
                issue(
                    "invalid_json",
                    f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                )
            ]
        ) from None
    except RecursionError:
        raise WorkflowError(
            [issue("too_deeply_nested", f"{source}: JSON is nested too deeply to be a workflow")]
        ) from None
    except ValueError as exc:  # e.g. an integer literal with thousands of digits
        raise WorkflowError([issue("invalid_json", f"{source}: invalid JSON: {exc}")]) from None


def load_workflow(source: Workflow | Mapping[str, Any] | Path | str) -> Workflow:
    """A Workflow from a path, an already-parsed JSON object (bare or wrapped), or a Workflow."""
    if isinstance(source, Workflow):
        return source
    if isinstance(source, (str, Path)):
        return parse_envelope(read_json_file(source), source=str(source))
    return parse_envelope(source)


def parse_envelope(data: Any, *, source: str | None = None) -> Workflow:
    if not isinstance(data, Mapping):
        raise WorkflowError(
            [
                issue(
                    "invalid_workflow_shape",
                    f'the workflow must be a JSON object mapping node ids to nodes (or {{"nodes": ..., '
                    f'"params": ...}}), got {_json_kind(data)}',
                )
            ]
        )
    nodes_value = data.get("nodes")
    wrapped = "nodes" in data and not (isinstance(nodes_value, Mapping) and "class_type" in nodes_value)
    if not wrapped:
        # Node ids that are not strings are reported by validate_nodes (kept off this hot path).
        return Workflow(nodes=data if isinstance(data, dict) else dict(data), source=source)
    try:
        envelope = WorkflowFile.model_validate(dict(data))
    except PydanticValidationError as exc:
        raise WorkflowError([_envelope_issue(error) for error in exc.errors()]) from None
    return Workflow(nodes=envelope.nodes, params=envelope.params, meta=envelope.meta, source=source)


def _envelope_issue(error: Any) -> ValidationIssue:
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc) or "top level"
    code = "invalid_param" if loc and loc[0] == "params" else "invalid_workflow_shape"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unexpected key; a wrapped workflow has only 'nodes', 'params' and 'meta'"
        if len(loc) > 1 and loc[0] == "params":
            message = "unexpected key; a param has only 'node', 'input' and 'description'"
    return issue(code, f"{where}: {message}")


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_param_specs(workflow: Workflow, registry: Registry) -> list[ValidationIssue]:
    """Each declared param must point at an existing node and one of its settable inputs."""
    issues = []
    for name, spec in workflow.params.items():
        node = workflow.nodes.get(spec.node)
        if node is None:
            issues.append(
                issue("param_missing_node", f"param {name!r} points at node {spec.node!r}, which does not exist")
            )
            continue
        node_spec = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        if node_spec is None:
            continue  # the node's own problem is reported by validation
        input_spec = node_spec.inputs.get(spec.input)
        if input_spec is None:
            issues.append(
                issue(
                    "param_missing_input",
                    f"param {name!r} points at input {spec.input!r}, which {node_spec.name} does not have "
                    f"(inputs: {', '.join(node_spec.inputs) or 'none'})",
                    node=spec.node,
                    input=spec.input,
                )
            )
        elif input_spec.type not in sockets.CONSTANT_CHECKS:
            issues.append(
                issue(
                    "param_not_settable",
                    f"param {name!r} points at a {input_spec.type} input, which only takes links",
                    node=spec.node,
                    input=spec.input,
                )
            )
    return issues


def apply_params(
    workflow: Workflow, values: Mapping[str, Any] | None, registry: Registry
) -> tuple[dict[str, Any], dict[str, Any], list[ValidationIssue]]:
    """Set param values on their target inputs; returns (nodes, converted values, issues).

    Strings are parsed to the target input's type ("5" -> 5 for INT, "true" for BOOLEAN); other
    values must already fit it. The workflow itself is not modified.
    """
    issues = check_param_specs(workflow, registry)
    if not values:
        return workflow.nodes, {}, issues
    nodes = dict(workflow.nodes)
    resolved: dict[str, Any] = {}
    for name, value in values.items():
        spec = workflow.params.get(name)
        if spec is None:
            names = sorted(workflow.params)
            known = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            known = known or "none (this workflow declares no params)"
            issues.append(issue("unknown_param", f"unknown param {name!r}; known params: {known}"))
            continue
        node = nodes.get(spec.node)
        node_spec = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        input_spec = node_spec.inputs.get(spec.input) if node_spec is not None else None
        if input_spec is None or input_spec.type not in sockets.CONSTANT_CHECKS:
            continue  # the param's target is broken; check_param_specs reported it
        input_type = input_spec.type
        try:
            if isinstance(value, str) and input_type not in (sockets.STRING, sockets.ANY):
                converted = sockets.parse_text(input_type, value)
            else:
                converted = sockets.check_constant(input_type, value)
        except sockets.ConstantError as exc:
            issues.append(issue("invalid_param_value", f"param {name!r}: {exc}", node=spec.node, input=spec.input))
            continue
        inputs = node.get("inputs")
        inputs = dict(inputs) if isinstance(inputs, dict) else {}
        inputs[spec.input] = converted
        nodes[spec.node] = {**node, "inputs": inputs}
        resolved[name] = converted
    return nodes, resolved, issues
