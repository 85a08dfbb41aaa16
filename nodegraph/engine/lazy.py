"""Modules imported on first use, so declaring nodes costs no torch import.

`nodegraph nodes` and `nodegraph validate` need every node's declaration but none of the libraries the
nodes run on; torch, open_clip and timm alone take seconds to import. A node module therefore binds the
library modules it calls with `lazy_import` and reaches their names as attributes at run time:

    sampling = lazy_import("nodegraph.generate.sampling")   # nothing imported yet
    ...
    def run(self, ctx, ...):
        return (sampling.decode(...),)                      # imported here, once

The stand-in is a plain object, not a module in `sys.modules` (importlib's LazyLoader puts one there,
and torch's own import walks `sys.modules`, which set such modules off half-way through it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module until one of its attributes is read; then imports it and forwards to it."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"


def lazy_import(name: str) -> Any:
    """A stand-in for the module `name` that imports it when an attribute is first read."""
    return LazyModule(name)
