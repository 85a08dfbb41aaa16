"""The output cache: signature -> node outputs, LRU-evicted under per-device byte budgets.

Only tensor bytes count (found inside tuples, lists, dicts, dataclasses, plain objects and
nn.Module parameters/buffers); a budget is kept per device ("cpu", "cuda:0", ...), and an entry
holding tensors on several devices is charged to each. Tensors are never moved between devices; models
(movable values, see engine/memory.py) are: when a budget other than the offload device's is full, an
entry holding models is offloaded (its models moved to "cpu") rather than dropped, and models are moved
back before a node that needs them runs (`prepare_inputs`).
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.memory import Residency, is_movable

torch = lazy_import("torch")  # only values that hold tensors need it

_SCALARS = (int, float, str, bool, bytes, type(None))
# Walking these would reach whole libraries, not a node's data.
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)
_MAX_DEPTH = 8  # objects nest models in wrappers; deeper than this is not worth walking


class CacheEntry:
    __slots__ = ("outputs", "ui", "files", "nbytes", "movables")

    def __init__(
        self,
        outputs: tuple[Any, ...],
        ui: dict[str, Any] | None,
        files: list[Path] | None,
        nbytes: dict[str, int],
    ) -> None:
        self.outputs = outputs
        self.ui = ui
        self.files = files
        self.nbytes = nbytes  # device key -> bytes
        self.movables: tuple[Any, ...] = ()  # the models among the outputs (filled by the memory manager)


def tensor_bytes(value: Any) -> dict[str, int]:
    """Bytes of tensor storage reachable from `value`, per device key; shared storages count once."""
    totals: dict[str, int] = {}
    if type(value) is tuple:
        for item in value:
            if type(item) not in _SCALARS:
                break
        else:
            return totals  # the common case of scalar outputs, without the walk's bookkeeping
    seen: set[int] = set()
    # (value, depth, the device its tensors are charged to: None = their own; a model that says where it
    # lives (`.device`, engine/memory.py) is charged there as a whole)
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        item, depth, charge = stack.pop()
        if isinstance(item, _SCALARS) or depth > _MAX_DEPTH:
            continue
        identity = id(item)
        if identity in seen:
            continue
        seen.add(identity)
        if isinstance(item, torch.Tensor):
            _add_tensor(item, totals, seen, charge)
        elif isinstance(item, torch.nn.Module):
            for tensor in item.parameters():
                _add_tensor(tensor, totals, seen, charge)
            for tensor in item.buffers():
                _add_tensor(tensor, totals, seen, charge)
        elif isinstance(item, (tuple, list, set, frozenset)):
            stack.extend((child, depth + 1, charge) for child in item if type(child) not in _SCALARS)
        elif isinstance(item, Mapping):
            # Scalars are dropped here rather than popped one by one: a CLIP's tokenizer holds ~150k of them.
            stack.extend((child, depth + 1, charge) for child in item.values() if type(child) not in _SCALARS)
        else:
            if charge is None and not isinstance(item, _OPAQUE) and is_movable(item):
                charge = str(item.device)
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                stack.extend((getattr(item, f.name), depth + 1, charge) for f in dataclasses.fields(item))
            elif hasattr(item, "__dict__") and not isinstance(item, _OPAQUE):
                stack.extend((child, depth + 1, charge) for child in vars(item).values())
    return totals


def _add_tensor(tensor: torch.Tensor, totals: dict[str, int], seen: set[int], charge: str | None = None) -> None:
    if tensor.is_meta:
        return
    device = charge or str(tensor.device)
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        totals[device] = totals.get(device, 0) + tensor.nbytes
        return
    key = storage.data_ptr()
    if key and -key in seen:  # negative: kept apart from the id()s stored in the same set
        return
    seen.add(-key)
    totals[device] = totals.get(device, 0) + storage.nbytes()


def default_budget(device: str) -> int:
    """Half of physical RAM for "cpu"; 80% of the device's memory for an accelerator."""
    if device.startswith("cuda"):
        index = torch.device(device).index
        total = torch.cuda.get_device_properties(index if index is not None else 0).total_memory
        return int(total * 0.8)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class OutputCache:
    """LRU over entries; `budgets` maps "cpu", "cuda" (every CUDA device) or "cuda:N" to bytes.

    `offload_device` ("cpu"; None: never offload) is where models go when their device's budget is full;
    `residency` is the memory manager that moves them and counts the moves (`residency.stats`)."""

    def __init__(self, budgets: Mapping[str, int] | None = None, max_entries: int = 100_000,
                 offload_device: str | None = "cpu") -> None:
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._budgets_given = dict(budgets or {})
        self._budgets: dict[str, int] = {}
        self.used: dict[str, int] = {}
        self.max_entries = max_entries
        self.residency = Residency(self, offload_device) if offload_device is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, signature: str) -> bool:
        return signature in self._entries

    def touch(self, signature: str) -> bool:
        """Mark an entry most recently used; False if it is not cached."""
        try:
            self._entries.move_to_end(signature)
        except KeyError:
            return False
        return True

    def get(self, signature: str) -> CacheEntry | None:
        """The entry for `signature` (marking it most recently used), or None."""
        entry = self._entries.get(signature)
        if entry is not None:
            self._entries.move_to_end(signature)
        return entry

    def put(self, signature: str, entry: CacheEntry) -> bool:
        """Store an entry, evicting least recently used ones; False if it alone exceeds a budget."""
        for device, size in entry.nbytes.items():
            if size > self.budget(device):
                return False
        old = self._entries.pop(signature, None)
        if old is not None:
            self._release(old)
        self._entries[signature] = entry
        for device, size in entry.nbytes.items():
            self.used[device] = self.used.get(device, 0) + size
        if self.residency is not None:
            self.residency.register(signature, entry)
        for device in list(entry.nbytes):
            self._evict_until_within(device, keep={signature})
        while len(self._entries) > self.max_entries:
            self._release(self._entries.popitem(last=False)[1])
        return True

    def discard(self, signature: str) -> None:
        entry = self._entries.pop(signature, None)
        if entry is not None:
            self._release(entry)

    def clear(self) -> None:
        if self.residency is not None:
            for entry in self._entries.values():
                self.residency.forget(entry)
        self._entries.clear()
        self.used.clear()

    # ------------------------------------------------------------------------ the memory manager's hooks
    def manages(self, device: Any) -> bool:
        """Whether models are moved for runs on `device` (there is an offload device, and it is another)."""
        return self.residency is not None and self.residency.manages(device)

    def prepare_inputs(self, values: list[Any], device: Any, keep: set[str]) -> None:
        """Before a node runs on `device`: its input models that were offloaded come back (room is made by
        offloading or dropping least-recently-used entries, never those in `keep`)."""
        if self.residency is not None:
            self.residency.prepare(values, device, keep)

    def make_room(self, device: str, nbytes: int, keep: set[str]) -> None:
        """Offload or drop least-recently-used entries until `nbytes` more fit in the device's budget."""
        self._evict_until_within(device, keep, extra=nbytes)

    def measure(self, value: Any) -> dict[str, int]:
        return tensor_bytes(value)

    def remeasure(self, signature: str) -> None:
        """Charge an entry again after its models moved."""
        entry = self._entries.get(signature)
        if entry is None:
            return
        self._release(entry, forget=False)
        entry.nbytes = tensor_bytes(entry.outputs if entry.ui is None else (entry.outputs, entry.ui))
        for device, size in entry.nbytes.items():
            self.used[device] = self.used.get(device, 0) + size

    def budget(self, device: str) -> int:
        budget = self._budgets.get(device)
        if budget is None:
            kind = device.split(":", 1)[0]
            budget = self._budgets_given.get(device, self._budgets_given.get(kind))
            if budget is None:
                budget = default_budget(device)
            self._budgets[device] = budget
        return budget

    def _evict_until_within(self, device: str, keep: set[str], extra: int = 0) -> None:
        budget = self.budget(device) - extra
        if self.used.get(device, 0) <= budget:
            return
        residency = self.residency
        offloaded = False
        for signature in list(self._entries):
            if self.used.get(device, 0) <= budget:
                break
            if signature in keep:
                continue
            entry = self._entries.get(signature)
            if entry is None or not entry.nbytes.get(device):
                continue
            if residency is not None and entry.movables and residency.offload(entry, device):
                offloaded = True  # its models moved (and it was re-measured); what remains here is dropped below
                if not entry.nbytes.get(device):
                    continue
            del self._entries[signature]
            self._release(entry)
            if residency is not None:
                residency.stats.drops += 1
        if offloaded and residency is not None:
            self._evict_until_within(residency.offload_device, keep)

    def _release(self, entry: CacheEntry, forget: bool = True) -> None:
        for device, size in entry.nbytes.items():
            self.used[device] -= size
        if forget and self.residency is not None:
            self.residency.forget(entry)
