"""Model configs from checkpoint metadata: one checked constructor for every config dataclass.

A checkpoint is user input: its metadata may be malformed (a config that is not a mapping, a key the
architecture does not have, a string where a width goes) or absurd (a billion channels, a million
blocks). `from_metadata` turns every such case into a CheckpointError naming the file and the field,
before any module is built. Counts that drive Python loops carry a tighter bound in their field's
metadata (`field(default=..., metadata={"max": 64})`); a field may also list its `choices`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from nodegraph.errors import CheckpointError

T = TypeVar("T")

# The precisions a diffusion network computes at (DiffusionModel.with_precision says what each does). Here, in a
# module free of torch, so the loader nodes can list them without importing torch at start-up.
PRECISIONS = ("auto", "fp32", "bf16")
MAX_INT = 1 << 16  # widths and sizes; a weight tensor that large would not be a checkpoint of these models
MAX_ITEMS = 16  # entries of a tuple field (channel multipliers, attention resolutions)


def from_metadata(cls: type[T], data: object, what: str) -> T:
    """An instance of the config dataclass `cls` from JSON metadata; missing fields take their defaults."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{what}: the config is {type(data).__name__}, not a mapping of field names to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [str(key) for key in data if key not in fields]
    if unknown:
        raise CheckpointError(f"{what}: the config has unknown field(s) {', '.join(map(repr, unknown[:5]))} "
                              f"({cls.__name__} has {', '.join(fields)}); was it written by another version?")
    hints = typing.get_type_hints(cls)
    values = {name: _checked(value, hints[name], fields[name].metadata, f"{what}: config field {name!r}")
              for name, value in data.items()}
    return cls(**values)


def _checked(value: Any, hint: Any, meta: Mapping[str, Any], where: str) -> Any:
    if hint is bool:
        if type(value) is not bool:
            raise CheckpointError(f"{where} must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if type(value) is not int:
            raise CheckpointError(f"{where} must be an integer, got {_show(value)}")
        return _within(value, meta.get("min", 0), meta.get("max", MAX_INT), where)
    if hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise CheckpointError(f"{where} must be a finite number, got {_show(value)}")
        return _within(float(value), meta.get("min", -MAX_INT), meta.get("max", MAX_INT), where)
    if hint is str:
        if type(value) is not str:
            raise CheckpointError(f"{where} must be a string, got {_show(value)}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise CheckpointError(f"{where} is {value!r}; known: {', '.join(choices)}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
            raise CheckpointError(f"{where} must be a list of at most {MAX_ITEMS} integers, got {_show(value)}")
        return tuple(_checked(item, int, meta, where) for item in value)
    raise CheckpointError(f"{where} has a type this loader cannot check ({hint})")


def _within(value: float, low: float, high: float, where: str) -> Any:
    if not low <= value <= high:
        raise CheckpointError(f"{where} is {value}, outside [{low}, {high}]: the file's metadata is damaged")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
