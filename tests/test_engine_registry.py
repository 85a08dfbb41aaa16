"""Registry: built-in discovery, entry-point plugins, declaration checks and the catalogue."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import nodegraph.nodes
from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.registry import Registry
from nodegraph.engine.sockets import SocketType
from nodegraph.errors import NodeDefinitionError, NodeExecutionError


def test_builtin_nodes_are_discovered() -> None:
    registry = Registry.discover(plugins=False)
    for name in ("Int", "Float", "String", "Add", "Preview", "LoadImage", "SaveImage"):
        assert name in registry


def test_a_new_module_in_the_nodes_package_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zz_extra_for_test.py").write_text(
        "from nodegraph.engine.node import Node, Out\n"
        "class _Hidden(Node):\n"
        "    def run(self, ctx):\n        return ()\n"
        "class Extra(Node):\n"
        "    outputs = (Out('INT'),)\n"
        "    def run(self, ctx):\n        return (1,)\n"
    )
    monkeypatch.setattr(nodegraph.nodes, "__path__", [*nodegraph.nodes.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "nodegraph.nodes.zz_extra_for_test", raising=False)
    registry = Registry.discover(plugins=False)
    assert "Extra" in registry and "_Hidden" not in registry
    assert registry["Extra"].cls.__module__ == "nodegraph.nodes.zz_extra_for_test"


def test_a_broken_module_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zz_broken_for_test.py").write_text("raise ImportError('missing dependency xyz')\n")
    monkeypatch.setattr(nodegraph.nodes, "__path__", [*nodegraph.nodes.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "nodegraph.nodes.zz_broken_for_test", raising=False)
    registry = Registry.discover(plugins=False)
    assert "Add" in registry
    assert any("zz_broken_for_test" in error and "xyz" in error for error in registry.load_errors)
    engine = Engine("cpu", registry=registry)
    (issue,) = engine.validate({"1": {"class_type": "Missing"}, "2": {"class_type": "Preview", "inputs": {"value": 1}}})
    assert "failed to load" in issue.message


def make_plugin(root: Path, value: str) -> None:
    """A fake installed distribution declaring a `nodegraph.nodes` entry point."""
    (root / "ng_test_plugin.py").write_text(
        "from nodegraph.engine.node import Node, Out\n"
        "class PluginNode(Node):\n"
        "    outputs = (Out('STRING'),)\n"
        "    def run(self, ctx):\n        return ('from plugin',)\n"
        "NODES = [PluginNode]\n"
    )
    info = root / "ng_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ng-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[nodegraph.nodes]\ntest = {value}\n")


@pytest.mark.parametrize("value", ["ng_test_plugin", "ng_test_plugin:PluginNode", "ng_test_plugin:NODES"])
def test_entry_point_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    make_plugin(tmp_path, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ng_test_plugin", raising=False)
    importlib.invalidate_caches()
    registry = Registry.discover()
    assert "PluginNode" in registry, registry.load_errors
    engine = Engine("cpu", registry=registry, output_dir=tmp_path)
    result = engine.run(
        {"1": {"class_type": "PluginNode"}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}}
    )
    assert result.outputs["2"]["value"] == "from plugin"


def test_a_broken_plugin_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_plugin(tmp_path, "ng_test_plugin:DOES_NOT_EXIST")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ng_test_plugin", raising=False)
    importlib.invalidate_caches()
    registry = Registry.discover()
    assert "Add" in registry
    assert any("DOES_NOT_EXIST" in error for error in registry.load_errors)


def declare(**attributes: Any) -> type[Node]:
    def run(self: Node, ctx: RunContext, **inputs: Any) -> tuple[Any, ...]:
        return ()

    return type("Declared", (Node,), {"run": run, **attributes})


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({"inputs": {"x": In("lowercase")}}, "invalid type"),
        ({"inputs": {"x": "FLOAT"}}, "must be In"),
        ({"inputs": {"x": In("INT", default=2.5)}}, "default"),
        ({"inputs": {"x": In("INT", default=True)}}, "default"),
        ({"inputs": {"x": In("FLOAT", default=0)}}, "must be a float"),
        ({"inputs": {"x": In("INT", default=5, min=0, max=3)}}, "out of range"),
        ({"inputs": {"x": In("INT", min=5, max=3)}}, "min 5 > max 3"),
        ({"inputs": {"x": In("STRING", default="c", choices=("a", "b"))}}, "not among choices"),
        ({"inputs": {"x": In("IMAGE", default=1)}}, "cannot have a default"),
        ({"inputs": {"x": In("IMAGE", min=0)}}, "only apply to constant"),
        ({"inputs": {"not valid": In("INT")}}, "identifier"),
        ({"outputs": (Out("*"),)}, "invalid type"),
        ({"outputs": ("FLOAT",)}, "must be Out"),
        ({"passthrough": "value", "outputs": (Out("INT"),)}, "passthrough 'value' must name an input"),
        ({"passthrough": "x", "inputs": {"x": In("INT", default=0)}}, "must have an output"),
    ],
)
def test_bad_declarations_are_refused_at_registration(attributes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(NodeDefinitionError, match=fragment):
        Registry().register(declare(**attributes))


def test_run_must_accept_the_declared_inputs() -> None:
    class Mismatch(Node):
        inputs = {"a": In("FLOAT", default=0.0)}

        def run(self, ctx: RunContext, b: float) -> tuple[()]:
            return ()

    with pytest.raises(NodeDefinitionError, match="does not accept input"):
        Registry().register(Mismatch)


def test_run_is_required() -> None:
    class NoRun(Node):
        pass

    with pytest.raises(NodeDefinitionError, match="does not implement run"):
        Registry().register(NoRun)


def test_duplicate_names_need_replace() -> None:
    class Add(Node):
        def run(self, ctx: RunContext) -> tuple[()]:
            return ()

    registry = Registry.discover(plugins=False)
    with pytest.raises(NodeDefinitionError, match="already registered"):
        registry.register(Add)
    version = registry.version
    registry.register(Add, replace=True)
    assert registry["Add"].cls is Add and registry.version > version


def test_new_type_names_work_as_link_only_types(engine: Engine) -> None:
    class MakeWidget(Node):
        outputs = (Out("WIDGET"),)

        def run(self, ctx: RunContext) -> tuple[object]:
            return (object(),)

    class UseWidget(Node):
        inputs = {"widget": In("WIDGET")}
        outputs = (Out("BOOLEAN"),)

        def run(self, ctx: RunContext, widget: object) -> tuple[bool]:
            return (widget is not None,)

    engine.registry.register(MakeWidget)
    engine.registry.register(UseWidget)
    ok = {
        "1": {"class_type": "MakeWidget"},
        "2": {"class_type": "UseWidget", "inputs": {"widget": ["1", 0]}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }
    assert engine.run(ok).outputs["3"]["value"] is True
    issues = engine.validate({**ok, "2": {"class_type": "UseWidget", "inputs": {"widget": "inline"}}})
    assert [issue.type for issue in issues] == ["wrong_type"]


def test_catalogue_entries() -> None:
    catalogue = Registry.discover(plugins=False).catalogue()
    json.dumps(catalogue)
    add = catalogue["Add"]
    assert add["category"] == "utility" and add["output_node"] is False and add["description"]
    assert add["inputs"]["a"] == {
        "type": "FLOAT",
        "default": 0.0,
        "optional": False,
        "link_only": False,
        "accepts": ["FLOAT", "INT"],
        "description": "first addend",
    }
    assert add["outputs"] == [{"type": "FLOAT", "name": "sum"}]
    assert catalogue["Preview"]["output_node"] is True
    assert catalogue["Preview"]["inputs"]["value"]["type"] == "*"
    assert catalogue["SaveImage"]["inputs"]["images"]["link_only"] is True
    assert [out["type"] for out in catalogue["LoadImage"]["outputs"]] == ["IMAGE", "MASK"]


# ------------------------------------------------------------------------------------------ socket types
def test_the_catalogue_lists_every_socket_type_the_nodes_use_with_its_value_class() -> None:
    registry = Registry.discover(plugins=False)
    used = {str(t) for name in registry for t in
            [*(i.type for i in registry[name].inputs.values()), *(o.type for o in registry[name].outputs)]}
    table = registry.socket_types()
    assert set(table) == used
    assert {"IMAGE", "MASK", "LATENT", "NOISE", "GUIDANCE", "DECODER", "INPAINT_MODEL"} <= used
    for name, info in table.items():
        assert info["value"] != "undeclared", name
        module, _, cls = info["value"].rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name
        assert info["convention"], name
    assert "1 = the region to generate" in table["MASK"]["convention"]
    assert table["DECODER"]["kind"] == "decoder" and table["INPAINT_MODEL"]["kind"] == "inpaint"


def test_nodes_types_prints_the_socket_table() -> None:
    from nodegraph import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["nodes", "--types", "--json"]) == 0
    table = json.loads(out.getvalue())
    assert table["LATENT"]["value"] == "nodegraph.generate.conditions.Latent"
    assert table["INT"]["constant"] is True and table["IMAGE"]["constant"] is False


def test_a_plugin_may_declare_a_socket_type_but_not_redeclare_one() -> None:
    registry = Registry()
    photo = SocketType("PHOTO", "builtins:bytes", "PNG bytes")

    class MakePhoto(Node):
        outputs = (Out(photo, "photo"),)

        def run(self, ctx: RunContext) -> tuple[bytes]:
            return (b"png",)

    registry.register(MakePhoto)
    assert registry.socket_types()["PHOTO"] == {"value": "builtins.bytes", "convention": "PNG bytes",
                                                "constant": False}

    class Clash(Node):
        outputs = (Out(SocketType("IMAGE", "builtins:bytes", "not a tensor"), "image"),)

        def run(self, ctx: RunContext) -> tuple[bytes]:
            return (b"",)

    with pytest.raises(NodeDefinitionError, match="IMAGE carries builtins:bytes, but it is already declared"):
        registry.register(Clash)


def test_a_node_that_puts_the_wrong_value_on_a_socket_is_named(engine: Engine) -> None:
    class Broken(Node):
        outputs = (Out("IMAGE", "images"),)

        def run(self, ctx: RunContext) -> tuple[str]:
            return ("not an image",)

    engine.registry.register(Broken)
    with pytest.raises(NodeExecutionError) as info:
        engine.run({"b": {"class_type": "Broken", "inputs": {}}, "p": {"class_type": "Preview",
                                                                     "inputs": {"value": ["b", 0]}}})
    assert info.value.node_id == "b" and "output 0 (images)" in str(info.value)
    assert "IMAGE carries torch.Tensor, not str" in str(info.value)


def test_the_architecture_docs_socket_table_matches_the_declarations() -> None:
    """docs/ARCHITECTURE.md shows the socket table; it must say what the code declares."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- socket-table: start -->")[1].split("<!-- socket-table: end -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    documented = {}
    for row in rows:
        name, value, convention = (cell.strip() for cell in row.strip("|").split(" | "))
        documented[name.strip("`")] = (value, convention)
    expected = {}
    for name, info in Registry.discover(plugins=False).socket_types().items():
        kind = f" (kind `{info['kind']}`)" if "kind" in info else ""
        expected[name] = (f"`{info['value']}`{kind}", info["convention"])
    assert documented == expected, "update the table in docs/ARCHITECTURE.md (nodegraph nodes --types)"
