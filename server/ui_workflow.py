"""API-format workflows -> ComfyUI's UI format (boxes, wires, positions), laid out to read left to right.

The frontend's workflow browser opens UI-format files; nodegraph's workflows are API-format (what runs).
`to_ui(api_nodes, registry)` builds the UI form: every node a box titled with its id in the workflow (or
its `_meta.title`), placed in columns by its depth in the graph (longest path from a source), each column
ordered to follow its inputs so wires cross little; widget values in the order the frontend reads them.
The server makes these on the fly for the workflow browser, so they never go stale; this module is also
a command that writes them to files:

    python -m nodegraph.server.ui_workflow workflows/*.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nodegraph.engine.registry import Registry
from nodegraph.server.object_info import is_widget

SEED_INPUTS = ("seed", "noise_seed")
VIEW = (1500.0, 820.0)  # the canvas area the initial zoom fits the graph into
COLUMN_GAP = 80
ROW_GAP = 40
SLOT_HEIGHT = 22
WIDGET_HEIGHT = 26
TEXT_BOX_HEIGHT = 110
TITLE_HEIGHT = 34


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def workflow_nodes(document: Mapping[str, Any]) -> Mapping[str, Any]:
    nodes = document.get("nodes")
    if isinstance(nodes, Mapping) and "class_type" not in nodes:
        return nodes
    return document


def to_ui(document: Mapping[str, Any], registry: Registry, *, name: str | None = None) -> dict[str, Any]:
    """The UI-format workflow of an API-format one (bare or wrapped); unknown node classes keep their box."""
    api = workflow_nodes(document)
    ids = list(api)
    number = {node_id: index + 1 for index, node_id in enumerate(ids)}
    links: list[list[Any]] = []
    outgoing: dict[tuple[str, int], list[int]] = {}
    node_inputs: dict[str, list[dict[str, Any]]] = {}
    widget_values: dict[str, list[Any]] = {}
    parents: dict[str, list[str]] = {node_id: [] for node_id in ids}

    for node_id in ids:
        node = api[node_id]
        spec = registry.get(node.get("class_type", ""))
        given = node.get("inputs") or {}
        inputs: list[dict[str, Any]] = []
        values: list[Any] = []
        declared = _ordered_inputs(spec) if spec is not None else [(key, None) for key in given]
        for input_name, input_spec in declared:
            value = given.get(input_name)
            link_id = None
            if _is_link(value) and value[0] in number:
                link_id = len(links) + 1
                source_type = _output_type(registry, api.get(value[0]), value[1])
                links.append([link_id, number[value[0]], value[1], number[node_id], len(inputs), source_type])
                outgoing.setdefault((value[0], value[1]), []).append(link_id)
                parents[node_id].append(value[0])
            type_name = _input_type(input_spec)
            slot: dict[str, Any] = {"name": input_name, "type": type_name, "link": link_id}
            if input_spec is not None and is_widget(input_spec):
                slot["widget"] = {"name": input_name}
                if link_id is not None or value is None:
                    values.append(input_spec.default if input_spec.has_default else _empty(input_spec))
                else:
                    values.append(value)
                if input_name in SEED_INPUTS and str(input_spec.type) == "INT":
                    values.append("fixed")  # the frontend gives seeds a control_after_generate widget: keep it still
                inputs.append(slot)
            elif link_id is not None or input_spec is not None:
                inputs.append(slot)
        node_inputs[node_id] = inputs
        widget_values[node_id] = values

    columns = _columns(ids, parents)
    positions, sizes = _layout(ids, columns, parents, api, registry, node_inputs, widget_values)

    ui_nodes = []
    for order, node_id in enumerate(_topological(ids, parents)):
        node = api[node_id]
        class_type = node.get("class_type", "")
        spec = registry.get(class_type)
        outputs = []
        for index, out in enumerate(spec.outputs if spec is not None else ()):
            outputs.append(
                {
                    "name": out.name or str(out.type).lower(),
                    "type": str(out.type),
                    "links": outgoing.get((node_id, index), []),
                    "slot_index": index,
                }
            )
        title = (node.get("_meta") or {}).get("title") or (node_id if not node_id.isdigit() else None)
        entry: dict[str, Any] = {
            "id": number[node_id],
            "type": class_type,
            "pos": positions[node_id],
            "size": sizes[node_id],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": node_inputs[node_id],
            "outputs": outputs,
            # cnr_id "comfy-core": the frontend then treats the node as built in, instead of asking ComfyUI's
            # online node registry which pack provides it (a request to another host).
            "properties": {"Node name for S&R": class_type, "cnr_id": "comfy-core"},
            "widgets_values": widget_values[node_id],
        }
        if title and title != class_type:
            entry["title"] = str(title)
        ui_nodes.append(entry)
    right = max(positions[n][0] + sizes[n][0] for n in ids) if ids else 0.0
    bottom = max(positions[n][1] + sizes[n][1] for n in ids) if ids else 0.0
    scale = round(max(0.4, min(1.0, VIEW[0] / (right + 120), VIEW[1] / (bottom + 160))), 3)
    extra: dict[str, Any] = {"ds": {"scale": scale, "offset": [60.0 / scale, 110.0 / scale]}}
    meta = document.get("meta") if isinstance(document.get("meta"), Mapping) else None
    if meta is not None or name is not None:
        extra["nodegraph"] = {"source": name, "meta": dict(meta or {})}
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nodegraph:{name or 'workflow'}")),
        "revision": 0,
        "last_node_id": len(ids),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": extra,
        "version": 0.4,
    }


def _ordered_inputs(spec: Any) -> list[tuple[str, Any]]:
    # The frontend orders inputs required first, then optional (as /object_info's input_order lists them).
    items = list(spec.inputs.items())
    return [item for item in items if not item[1].optional] + [item for item in items if item[1].optional]


def _input_type(spec: Any) -> str:
    if spec is None:
        return "*"
    return "COMBO" if spec.choices is not None else str(spec.type)


def _empty(spec: Any) -> Any:
    if spec.choices:
        return spec.choices[0]
    return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(str(spec.type), "")


def _output_type(registry: Registry, source: Any, index: int) -> str:
    spec = registry.get(source.get("class_type", "")) if isinstance(source, Mapping) else None
    if spec is None or not 0 <= index < len(spec.outputs):
        return "*"
    return str(spec.outputs[index].type)


def _topological(ids: Sequence[str], parents: Mapping[str, list[str]]) -> list[str]:
    done: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str, path: set[str]) -> None:
        if node_id in seen or node_id in path:
            return
        path.add(node_id)
        for parent in parents.get(node_id, []):
            visit(parent, path)
        path.discard(node_id)
        seen.add(node_id)
        done.append(node_id)

    for node_id in ids:
        visit(node_id, set())
    return done


def _columns(ids: Sequence[str], parents: Mapping[str, list[str]]) -> dict[str, int]:
    """Longest-path depth of each node (sources at 0); a cycle (an invalid workflow) is cut where found."""
    column: dict[str, int] = {}
    order = _topological(ids, parents)
    for node_id in order:
        column[node_id] = 1 + max((column[p] for p in parents[node_id] if p in column), default=-1)
    # Sources (loaders, seeds) move right to just before their first consumer, so their wires stay short.
    children: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for node_id in ids:
        for parent in parents[node_id]:
            children.setdefault(parent, []).append(node_id)
    for node_id in order:
        if not parents[node_id] and children[node_id]:
            column[node_id] = max(0, min(column[child] for child in children[node_id]) - 1)
    return column


def _layout(
    ids: Sequence[str],
    columns: Mapping[str, int],
    parents: Mapping[str, list[str]],
    api: Mapping[str, Any],
    registry: Registry,
    inputs: Mapping[str, list[dict[str, Any]]],
    values: Mapping[str, list[Any]],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    sizes: dict[str, list[float]] = {}
    for node_id in ids:
        spec = registry.get(api[node_id].get("class_type", ""))
        sockets = sum(1 for slot in inputs[node_id] if "widget" not in slot)
        outputs = len(spec.outputs) if spec is not None else 0
        text_boxes = sum(
            1 for name, declared in (spec.inputs.items() if spec is not None else ()) if declared.multiline
        )
        widgets = len(values[node_id]) - text_boxes
        height = TITLE_HEIGHT + max(sockets, outputs) * SLOT_HEIGHT + widgets * WIDGET_HEIGHT
        height += text_boxes * TEXT_BOX_HEIGHT + (8 if sockets or outputs else 0)
        if api[node_id].get("class_type") in ("SaveImage", "PreviewImage", "SaveImageWebsocket"):
            height = max(height, 300)
        if api[node_id].get("class_type") == "LoadImage":
            height += 300  # the frontend adds an upload button and shows the image on the node
        sizes[node_id] = [400.0 if text_boxes else 320.0, float(height)]
    by_column: dict[int, list[str]] = {}
    for node_id in ids:
        by_column.setdefault(columns[node_id], []).append(node_id)
    rank: dict[str, float] = {}
    positions: dict[str, list[float]] = {}
    x = 0.0
    for column in sorted(by_column):
        members = by_column[column]
        # Barycentre of the parents' rows keeps a node beside what feeds it.
        members.sort(key=lambda n: (sum(rank[p] for p in parents[n]) / len(parents[n])) if parents[n] else -1.0)
        y = 0.0
        for row, node_id in enumerate(members):
            rank[node_id] = row
            positions[node_id] = [x, y]
            y += sizes[node_id][1] + ROW_GAP
        x += max(sizes[node_id][0] for node_id in members) + COLUMN_GAP
    return positions, sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write ComfyUI UI-format copies of API-format workflows.")
    parser.add_argument("workflows", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="directory for the UI-format files")
    args = parser.parse_args(argv)
    registry = Registry.discover()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.workflows:
        document = json.loads(path.read_text(encoding="utf-8"))
        target = args.out / path.name
        target.write_text(json.dumps(to_ui(document, registry, name=path.stem), indent=1) + "\n", encoding="utf-8")
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
