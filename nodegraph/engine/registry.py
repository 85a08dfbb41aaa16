"""The node registry: an object (owned by an Engine) mapping class_type names to NodeSpecs.

Built-in nodes are every module of the `nodegraph.nodes` package, imported and scanned for Node
subclasses, so a new module there is picked up without editing a list. Third-party nodes come from
the `nodegraph.nodes` entry-point group; an entry point may name a module, a Node subclass, or an
iterable of Node subclasses. A module that fails to import is skipped and its error kept in
`load_errors` (shown by `nodegraph nodes` and in unknown-class messages) so one broken plugin cannot
take the whole engine down.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import traceback
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from nodegraph.engine import sockets
from nodegraph.engine.node import Node, NodeSpec
from nodegraph.errors import NodeDefinitionError

ENTRY_POINT_GROUP = "nodegraph.nodes"
BUILTIN_PACKAGE = "nodegraph.nodes"


class Registry:
    """class_type -> NodeSpec. `version` changes on every registration (it keys the plan memo)."""

    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._sockets: dict[str, sockets.SocketType] = dict(sockets.BUILTIN)
        self.load_errors: list[str] = []
        self.version = 0

    @classmethod
    def discover(cls, *, builtins: bool = True, plugins: bool = True) -> Registry:
        """A registry with the built-in nodes and (optionally) the installed plugins."""
        registry = cls()
        if builtins:
            registry.load_builtins()
        if plugins:
            registry.load_entry_points()
        return registry

    def register(self, node_cls: type[Node], *, name: str | None = None, replace: bool = False) -> NodeSpec:
        """Register a node class (checked now); `replace` lets tests override a built-in."""
        spec = NodeSpec.from_class(node_cls, name)
        existing = self._specs.get(spec.name)
        if existing is not None and existing.cls is not node_cls and not replace:
            raise NodeDefinitionError(
                f"node name {spec.name!r} is already registered by "
                f"{existing.cls.__module__}.{existing.cls.__qualname__}; pass replace=True or rename it"
            )
        declared = self._declared_sockets(spec)
        self._specs[spec.name] = spec
        self._sockets.update(declared)
        self.version += 1
        return spec

    def register_module(self, module: ModuleType) -> list[NodeSpec]:
        """Register every public Node subclass defined in `module` (not ones it imports)."""
        specs = []
        for attr, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, Node)
                and value is not Node
                and value.__module__ == module.__name__
                and not attr.startswith("_")
                and not inspect.isabstract(value)
                and not value.__dict__.get("abstract", False)
            ):
                specs.append(self.register(value))
        return specs

    def load_builtins(self) -> None:
        package = importlib.import_module(BUILTIN_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
            if info.name.startswith("_"):
                continue
            module_name = f"{BUILTIN_PACKAGE}.{info.name}"
            try:
                module = importlib.import_module(module_name)
                self.register_module(module)
            except Exception as exc:  # a broken module must not hide every other node
                self._record_failure(module_name, exc)

    def load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            where = f"entry point {entry_point.name} = {entry_point.value}"
            try:
                self._register_object(entry_point.load(), where)
            except Exception as exc:
                self._record_failure(where, exc)

    def _register_object(self, obj: Any, where: str) -> None:
        if isinstance(obj, ModuleType):
            self.register_module(obj)
        elif isinstance(obj, type) and issubclass(obj, Node):
            self.register(obj)
        elif isinstance(obj, Iterable):
            for item in obj:
                self.register(item)
        else:
            raise NodeDefinitionError(f"{where} must name a module, a Node subclass or a list of them")

    def _record_failure(self, where: str, exc: Exception) -> None:
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        location = f" ({last[0].filename}:{last[0].lineno})" if last else ""
        self.load_errors.append(f"{where}: {type(exc).__name__}: {exc}{location}")

    def _declared_sockets(self, spec: NodeSpec) -> dict[str, sockets.SocketType]:
        """The socket types `spec` declares; one name may not be declared with two value classes."""
        found: dict[str, sockets.SocketType] = {}
        for type_ in [*(i.type for i in spec.inputs.values()), *(o.type for o in spec.outputs)]:
            if not isinstance(type_, sockets.SocketType):
                continue
            known = self._sockets.get(type_) or found.get(type_)
            if known is not None and (known.value, known.kind) != (type_.value, type_.kind):
                raise NodeDefinitionError(
                    f"node {spec.name}: socket type {type_} carries {type_.value}, but it is already declared "
                    f"carrying {known.value}; rename the type or use the existing declaration"
                )
            found[type_] = type_
        return found

    def socket_types(self) -> dict[str, dict[str, Any]]:
        """Every socket type a registered node uses, with its value class and conventions (sorted by name)."""
        used = {str(t) for spec in self._specs.values() for t in
                [*(i.type for i in spec.inputs.values()), *(o.type for o in spec.outputs)]}
        table = {}
        for name in sorted(used):
            declared = self._sockets.get(name)
            table[name] = declared.describe() if declared is not None else {
                "value": "undeclared", "convention": "a name used by a plugin without a SocketType declaration",
                "constant": False}
        return table

    def get(self, name: str) -> NodeSpec | None:
        return self._specs.get(name)

    def __getitem__(self, name: str) -> NodeSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def catalogue(self) -> dict[str, dict[str, Any]]:
        """Every node's description, sorted by category then name (`nodegraph nodes --json`)."""
        ordered = sorted(self._specs.values(), key=lambda spec: (spec.category, spec.name))
        return {spec.name: spec.describe() for spec in ordered}
