"""nodegraph's node catalogue in ComfyUI's `/object_info` shape, so ComfyUI's clients and frontend read it.

    {"Decoder": {"input": {"required": {"steps": ["INT", {"default": 50, "min": 1, ...}], ...},
                           "optional": {...}},
                 "input_order": {"required": [...], "optional": [...]},
                 "output": ["IMAGE"], "output_is_list": [false], "output_name": ["images"],
                 "output_tooltips": [...], "name": "Decoder", "display_name": "Decoder",
                 "description": "...", "python_module": "nodegraph.nodes.decoder", "category": "...",
                 "output_node": false, "deprecated": false, "experimental": false}}

An input with choices becomes a combo (`[[choice, ...], {...}]`); a description becomes its tooltip;
`multiline` strings get a text box. LoadImage's file name is a combo of the input directory's images
with ComfyUI's upload button (`image_upload`), as ComfyUI's own LoadImage has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodegraph.engine.node import In, NodeSpec
from nodegraph.engine.sockets import CONSTANT_TYPES

# Inputs that name a file in the input directory: (node, input) -> combo of files with an upload button.
UPLOAD_INPUTS = {("LoadImage", "image")}


def input_options(spec: In) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if spec.has_default:
        options["default"] = spec.default
    for key in ("min", "max", "step"):
        value = getattr(spec, key)
        if value is not None:
            options[key] = value
    if str(spec.type) == "FLOAT" and spec.step is None:
        options["step"] = 0.01
        options["round"] = False
    if spec.multiline:
        options["multiline"] = True
    if str(spec.type) == "STRING":
        options["dynamicPrompts"] = False  # nodegraph does not expand {a|b}; the frontend must not either
    if spec.description:
        options["tooltip"] = spec.description
    return options


def input_entry(spec: In) -> list[Any]:
    """One input as ComfyUI declares it: [TYPE, options] or, for choices, [[choice, ...], options]."""
    options = input_options(spec)
    if spec.choices is not None:
        return [list(spec.choices), options]
    return [str(spec.type), options]


def node_info(spec: NodeSpec, files: Callable[[], list[str]] | None = None) -> dict[str, Any]:
    """ComfyUI's description of one node class; `files` lists the input directory (for upload combos)."""
    required: dict[str, list[Any]] = {}
    optional: dict[str, list[Any]] = {}
    for name, declared in spec.inputs.items():
        entry = input_entry(declared)
        if (spec.name, name) in UPLOAD_INPUTS and files is not None:
            entry = [files(), {**entry[1], "image_upload": True}]
        (optional if declared.optional else required)[name] = entry
    info_input: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        info_input["optional"] = optional
        order["optional"] = list(optional)
    module = spec.cls.__module__
    return {
        "input": info_input,
        "input_order": order,
        "output": [str(out.type) for out in spec.outputs],
        "output_is_list": [False] * len(spec.outputs),
        "output_name": [out.name or str(out.type).lower() for out in spec.outputs],
        "output_tooltips": [out.description for out in spec.outputs],
        "name": spec.name,
        "display_name": spec.name,
        "description": spec.description,
        "python_module": module,
        "category": spec.category,
        "output_node": spec.output_node,
        "deprecated": False,
        "experimental": False,
    }


def is_widget(spec: In) -> bool:
    """Whether the frontend shows this input as a widget (a value typed on the node) rather than a socket."""
    return spec.choices is not None or str(spec.type) in CONSTANT_TYPES
