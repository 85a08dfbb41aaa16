"""Model residency: models that do not all fit on the run's device take turns on it, without being reloaded.

Models are node outputs like any other, kept by the `OutputCache` under per-device byte budgets. What this
module adds is a second way out of a full budget: an entry holding *movable* values (models) is offloaded,
its models moved to the offload device ("cpu"), instead of dropped; it stays in the cache, so the loader that
made it does not run again. Before a node runs, the models among its inputs that are not on the run's device
are moved back, making room first by offloading (or, for plain tensors, dropping) least-recently-used
entries. Tensors are never moved: intermediate results stay on the device that produced them.

The engine knows no model. A value is movable when it is a `torch.nn.Module`, or an object with a `to(device)`
that moves it in place (returning itself) and a `device` attribute saying where it is (nodegraph's
DiffusionModel, ClipModel and RealModel all are); its tensor bytes are charged to that device.

On a run whose device is the offload device (a CPU run) there is nowhere to offload to: the cache drops
least-recently-used entries as it always has, and nothing here runs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodegraph.engine.lazy import lazy_import

if TYPE_CHECKING:
    from nodegraph.engine.cache import CacheEntry, OutputCache

torch = lazy_import("torch")

_SCALARS = (int, float, str, bool, bytes, type(None))
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)
_MAX_DEPTH = 8


def is_movable(value: Any) -> bool:
    """Whether the memory manager may move `value` between devices (see the module docstring)."""
    if isinstance(value, _SCALARS) or isinstance(value, _OPAQUE):
        return False
    if isinstance(value, torch.Tensor):
        return False
    if isinstance(value, torch.nn.Module):
        return True
    return callable(getattr(type(value), "to", None)) and hasattr(type(value), "device")


def device_key(device: Any) -> str:
    """A device as the cache's budgets name it ("cpu", "cuda:0"); a name torch does not know is kept as is."""
    if isinstance(device, str) and (device == "cpu" or ":" in device):
        return device  # already a key; and an Engine that only validates must not import torch
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        return str(device)
    if resolved.type == "cuda" and resolved.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(resolved)


def placement(value: Any) -> str | None:
    """The device a movable value lives on (None for a module without parameters or buffers)."""
    if isinstance(value, torch.nn.Module):
        for tensor in value.parameters():
            return device_key(tensor.device)
        for tensor in value.buffers():
            return device_key(tensor.device)
        return None
    return device_key(value.device)


def find_movables(value: Any) -> list[Any]:
    """The movable values reachable from `value` (containers, dataclasses, objects), outermost only: a model
    wrapper is moved as a whole, not its network separately."""
    found: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _SCALARS) or depth > _MAX_DEPTH or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            continue
        if is_movable(item):
            found.append(item)
        elif isinstance(item, (tuple, list, set, frozenset)):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend((getattr(item, f.name), depth + 1) for f in dataclasses.fields(item))
        elif hasattr(item, "__dict__") and not isinstance(item, _OPAQUE):
            stack.extend((child, depth + 1) for child in vars(item).values())
    return found


@dataclass
class MemoryStats:
    """What the manager did: moves off the run's device (offloads) and back (restores), their bytes, and
    entries dropped to keep a budget (each a node that must run again if its output is needed)."""

    offloads: int = 0
    restores: int = 0
    offloaded_bytes: int = 0
    restored_bytes: int = 0
    drops: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Residency:
    """The OutputCache's memory manager: which cached entries hold which models, and moving them."""

    def __init__(self, cache: OutputCache, offload_device: str = "cpu") -> None:
        self.cache = cache
        self.offload_device = device_key(offload_device)
        self.stats = MemoryStats()
        self._holders: dict[int, set[str]] = {}  # id(model) -> signatures of the cached entries holding it
        self._signatures: dict[int, str] = {}  # id(entry) -> its signature, for the entries holding models

    def manages(self, device: Any) -> bool:
        """Whether models are moved for runs on `device` (not when it is the offload device itself)."""
        return device_key(device) != self.offload_device

    # ------------------------------------------------------------------------------ bookkeeping (cache)
    def register(self, signature: str, entry: CacheEntry) -> None:
        if not entry.nbytes:
            return  # no tensors, so no models either
        entry.movables = tuple(find_movables(entry.outputs if entry.ui is None else (entry.outputs, entry.ui)))
        if entry.movables:
            self._signatures[id(entry)] = signature
        for value in entry.movables:
            self._holders.setdefault(id(value), set()).add(signature)

    def forget(self, entry: CacheEntry) -> None:
        signature = self._signatures.pop(id(entry), None)
        if signature is None:
            return
        for value in entry.movables:
            holders = self._holders.get(id(value))
            if holders is not None:
                holders.discard(signature)
                if not holders:
                    del self._holders[id(value)]

    # ------------------------------------------------------------------------------------------ moves
    def offload(self, entry: CacheEntry, device: str) -> bool:
        """Move the entry's models that live on `device` to the offload device; False if it holds none."""
        if device == self.offload_device:
            return False
        moved = False
        for value in entry.movables:
            if placement(value) == device:
                size = self._move(value, self.offload_device)
                self.stats.offloads += 1
                self.stats.offloaded_bytes += size
                moved = True
        return moved

    def prepare(self, values: Iterable[Any], device: Any, keep: set[str]) -> None:
        """Bring the models among a node's input values to `device`, making room for each first; the
        entries in `keep` (the node's inputs) are not offloaded to make that room."""
        target = device_key(device)
        for value in find_movables(list(values)):
            where = placement(value)
            if where is None or where == target:
                continue
            size = sum(self.cache.measure(value).values())
            self.cache.make_room(target, size, keep)
            self._move(value, target)
            self.stats.restores += 1
            self.stats.restored_bytes += size

    def _move(self, value: Any, device: str) -> int:
        """Move in place and re-measure every cached entry holding the value; returns its bytes."""
        moved = value.to(device)
        if moved is not value and not isinstance(value, torch.nn.Module):
            raise TypeError(f"{type(value).__name__}.to() returned a new object; a movable value must move in place")
        for signature in tuple(self._holders.get(id(value), ())):
            self.cache.remeasure(signature)
        return sum(self.cache.measure(value).values())


__all__ = ["MemoryStats", "Residency", "device_key", "find_movables", "is_movable", "placement"]
