"""Validation of API-format nodes, reporting every problem in one pass.

This is the hot path of a cold run, so it is plain dict code: no per-node pydantic models. Its
product, `CompiledNode`, is what the planner and executor use: each input resolved to either a
checked constant (defaults filled in, INT constants widened for FLOAT inputs) or a link with the
converter its types require.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from nodegraph.engine import sockets
from nodegraph.engine.node import NodeSpec
from nodegraph.errors import ValidationIssue

if TYPE_CHECKING:
    from nodegraph.engine.registry import Registry

Link = tuple[str, int, Callable[[Any], Any] | None]
_MISSING: Any = object()


class CompiledNode:
    """A node whose class is known: constants by input name, links as (source id, index, converter), and the
    linked inputs whose declared range or choices the executor must check when their values arrive."""

    __slots__ = ("id", "spec", "constants", "links", "bounded_links")

    def __init__(self, node_id: str, spec: NodeSpec, constants: dict[str, Any], links: dict[str, Link]) -> None:
        self.id = node_id
        self.spec = spec
        self.constants = constants
        self.links = links
        self.bounded_links: tuple[str, ...] = ()


def _issue(code: str, message: str, node: str | None = None, input: str | None = None) -> ValidationIssue:
    return ValidationIssue(node=node, input=input, type=code, message=message)


def validate_nodes(
    nodes: Mapping[str, Any], registry: Registry
) -> tuple[dict[str, CompiledNode], list[ValidationIssue]]:
    """Check every node and link; returns the compiled nodes and every issue found."""
    issues: list[ValidationIssue] = []
    compiled: dict[str, CompiledNode] = {}
    pending: list[tuple[CompiledNode, str, str, str, int]] = []  # links to check once all nodes are known
    for node_id, raw in nodes.items():
        if type(node_id) is not str:
            issues.append(_issue("invalid_node_id", f"node ids must be strings, not {node_id!r}", str(node_id)))
            continue
        if not isinstance(raw, dict):
            issues.append(
                _issue(
                    "node_not_object",
                    f"node must be an object with class_type and inputs, got {_kind(raw)}",
                    node_id,
                )
            )
            continue
        class_type = raw.get("class_type", _MISSING)
        if class_type is _MISSING:
            issues.append(_issue("missing_class_type", 'node has no class_type; add "class_type": NODE_NAME', node_id))
            continue
        if type(class_type) is not str:
            issues.append(
                _issue("invalid_class_type", f"class_type must be a string, got {_kind(class_type)}", node_id)
            )
            continue
        spec = registry.get(class_type)
        if spec is None:
            issues.append(_unknown_class(node_id, class_type, registry))
            continue
        inputs = raw.get("inputs", _MISSING)
        if inputs is _MISSING:
            inputs = {}
        elif not isinstance(inputs, dict):
            issues.append(
                _issue(
                    "inputs_not_object",
                    f"inputs must be an object mapping input names to values, got {_kind(inputs)}",
                    node_id,
                )
            )
            continue
        node = _compile(node_id, spec, inputs, issues, pending)
        compiled[node_id] = node
    for node, input_name, input_type, source, index in pending:
        _check_link(node, input_name, input_type, source, index, nodes, compiled, issues)
    return compiled, issues


def _compile(
    node_id: str,
    spec: NodeSpec,
    inputs: dict[str, Any],
    issues: list[ValidationIssue],
    pending: list[tuple[CompiledNode, str, str, str, int]],
) -> CompiledNode:
    constants: dict[str, Any] = {}
    node = CompiledNode(node_id, spec, constants, {})
    present = 0
    checks = spec.constant_checks
    for name, input_spec in spec.inputs.items():
        value = inputs.get(name, _MISSING)
        if value is None and input_spec.optional:
            value = _MISSING  # an explicit null leaves an optional input unconnected
        if value is _MISSING:
            if input_spec.has_default:
                constants[name] = input_spec.default
            elif input_spec.optional:
                constants[name] = None
            else:
                issues.append(
                    _issue(
                        "missing_required_input",
                        f"required {input_spec.type} input {name!r} is missing",
                        node_id,
                        name,
                    )
                )
            continue
        present += 1
        kind = type(value)
        if kind is list or kind is tuple:
            if len(value) == 2 and type(value[0]) in (str, int) and type(value[1]) is int and value[1] >= 0:
                pending.append((node, name, input_spec.type, str(value[0]), value[1]))
            else:
                issues.append(
                    _issue(
                        "malformed_link",
                        "a link must be [SOURCE_NODE_ID, OUTPUT_INDEX] (a string and a non-negative "
                        f"integer), got {_short(value)}",
                        node_id,
                        name,
                    )
                )
            continue
        check = checks[name]
        if check is None:
            issues.append(
                _issue(
                    "wrong_type",
                    f"{input_spec.type} input {name!r} only takes a link [SOURCE_NODE_ID, OUTPUT_INDEX], "
                    f"got {_short(value)}",
                    node_id,
                    name,
                )
            )
            continue
        try:
            value = check(value)
        except sockets.ConstantError as exc:
            issues.append(_issue(exc.code, f"input {name!r}: {exc}", node_id, name))
            continue
        problem = input_spec.bounds_problem(value)
        if problem is not None:
            issues.append(_issue(problem[0], f"input {name!r} is {_short(value)}{problem[1]}", node_id, name))
        constants[name] = value
    if present != len(inputs):
        for name in inputs:
            if name not in spec.inputs:
                known = ", ".join(spec.inputs) or "none"
                issues.append(
                    _issue(
                        "unknown_input",
                        f"{spec.name} has no input {name!r} (its inputs: {known})",
                        node_id,
                        str(name),
                    )
                )
    return node


def _check_link(
    node: CompiledNode,
    input_name: str,
    input_type: str,
    source: str,
    index: int,
    nodes: Mapping[str, Any],
    compiled: dict[str, CompiledNode],
    issues: list[ValidationIssue],
) -> None:
    if source not in nodes:
        issues.append(
            _issue(
                "link_to_missing_node",
                f"input {input_name!r} links to node {source!r}, which does not exist",
                node.id,
                input_name,
            )
        )
        return
    source_node = compiled.get(source)
    if source_node is None:
        return  # the source's own problem is already reported
    outputs = source_node.spec.outputs
    if index >= len(outputs):
        issues.append(
            _issue(
                "output_index_out_of_range",
                f"input {input_name!r} links to output {index} of node {source!r} ({source_node.spec.name}), "
                f"which has {len(outputs)} output{'s' if len(outputs) != 1 else ''}",
                node.id,
                input_name,
            )
        )
        return
    source_type = outputs[index].type
    ok, converter = sockets.link_converter(source_type, input_type)
    if not ok:
        issues.append(
            _issue(
                "type_mismatch",
                f"input {input_name!r} takes {input_type}, but output {index} of node {source!r} "
                f"({source_node.spec.name}) is {source_type}",
                node.id,
                input_name,
            )
        )
        return
    node.links[input_name] = (source, index, converter)
    input_spec = node.spec.inputs[input_name]
    if not input_spec.is_bounded:
        return
    repeated = source_node.spec.passthrough
    if index == 0 and repeated is not None and repeated in source_node.constants:
        # a constant node's value is known now: report it with the other problems, before anything runs
        value = source_node.constants[repeated]
        value = converter(value) if converter is not None else value
        problem = input_spec.bounds_problem(value)
        if problem is not None:
            issues.append(
                _issue(
                    problem[0],
                    f"input {input_name!r} is {_short(value)} (the value of node {source!r}, "
                    f"{source_node.spec.name}){problem[1]}",
                    node.id,
                    input_name,
                )
            )
        return
    node.bounded_links += (input_name,)


def _unknown_class(node_id: str, class_type: str, registry: Registry) -> ValidationIssue:
    lowered = class_type.lower()
    close = [name for name in registry if name.lower() == lowered or lowered in name.lower()][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `nodegraph nodes` lists them"
    if registry.load_errors:
        hint += f" (note: {len(registry.load_errors)} node module(s) failed to load: {registry.load_errors[0]})"
    return _issue("unknown_class_type", f"unknown class_type {class_type!r}{hint}", node_id)


def _kind(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
