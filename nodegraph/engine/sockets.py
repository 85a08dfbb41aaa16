"""The socket type table: which names exist, which take constants, which links are legal.

A socket type is just a name. The four constant types (INT, FLOAT, STRING, BOOLEAN) may be given
inline in a workflow; every other name (IMAGE, CLIP, ..., or any new name a node declares) is
link-only: its values can only come from another node's output. A link is legal when both ends
name the same type, when the input accepts ANY, or through one of the coercions in COERCIONS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

ANY = "*"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"

CONSTANT_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN})

# The link-only types the project uses, with the value convention each one carries. A name that is
# not listed here is still a valid link-only type; this table is documentation for the catalogue.
KNOWN_TYPES: dict[str, str] = {
    INT: "Python int (not bool)",
    FLOAT: "Python float (finite); INT links and int constants are accepted",
    STRING: "Python str",
    BOOLEAN: "Python bool",
    "IMAGE": "float tensor [B, C, H, W] in [-1, 1] on the producing device",
    "MASK": "float tensor [B, 1, H, W] in [0, 1]; 1 marks the region to repaint",
    "TEXT_EMBED": "text conditioning from a CLIP text encoder",
    "IMAGE_EMBED": "CLIP image embedding",
    "CLIP": "a loaded CLIP model",
    "PRIOR": "a loaded DALL-E 2 prior",
    "DECODER": "a loaded decoder diffusion model",
    "UPSAMPLER": "a loaded upsampler diffusion model",
    "NOISE": "a noise tensor or noise source",
    "GUIDANCE": "a guidance method applied while sampling",
    ANY: "any value (inputs only)",
}

# Documented coercions applied when a value crosses a link: (source type, input type) -> converter.
COERCIONS: dict[tuple[str, str], Callable[[Any], Any]] = {(INT, FLOAT): float}

_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def is_valid_type_name(name: object) -> bool:
    return isinstance(name, str) and (name == ANY or _TYPE_NAME.match(name) is not None)


def link_converter(source: str, target: str) -> tuple[bool, Callable[[Any], Any] | None]:
    """Whether a `source` output may feed a `target` input, and the converter to apply if any."""
    if source == target or target == ANY or source == ANY:
        return True, None
    converter = COERCIONS.get((source, target))
    return converter is not None, converter


def accepted_link_types(target: str) -> list[str]:
    """The output types that may link into an input of type `target` (for the catalogue)."""
    if target == ANY:
        return [ANY]
    return [target] + sorted(source for source, dest in COERCIONS if dest == target)


class ConstantError(ValueError):
    """A constant does not fit its declared type; `code` is the validation issue type."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _int(value: Any) -> int:
    if type(value) is int:
        return value
    raise ConstantError("wrong_type", f"expected an integer (INT), got {_describe(value)}")


def _float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        raise ConstantError("non_finite", f"expected a finite number (FLOAT), got {value!r}")
    if kind is int:
        return float(value)
    raise ConstantError("wrong_type", f"expected a number (FLOAT), got {_describe(value)}")


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    raise ConstantError("wrong_type", f"expected a string (STRING), got {_describe(value)}")


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise ConstantError("wrong_type", f"expected true or false (BOOLEAN), got {_describe(value)}")


def _any(value: Any) -> Any:
    kind = type(value)
    if kind is float and not math.isfinite(value):
        raise ConstantError("non_finite", f"expected a finite number, got {value!r}")
    if kind in (int, float, str, bool):
        return value
    raise ConstantError("wrong_type", f"expected a number, string or boolean, got {_describe(value)}")


CONSTANT_CHECKS: dict[str, Callable[[Any], Any]] = {
    INT: _int,
    FLOAT: _float,
    STRING: _string,
    BOOLEAN: _boolean,
    ANY: _any,
}


def check_constant(type_name: str, value: Any) -> Any:
    """Return `value` converted to `type_name`'s Python type, or raise ConstantError."""
    check = CONSTANT_CHECKS.get(type_name)
    if check is None:
        raise ConstantError(
            "wrong_type", f"{type_name} values cannot be written inline; link this input to a node output"
        )
    return check(value)


def parse_text(type_name: str, text: str) -> Any:
    """Parse a command-line style value ("5", "0.5", "true") into `type_name`'s Python type."""
    if type_name in (STRING, ANY):
        return text
    stripped = text.strip()
    if type_name == INT:
        try:
            return int(stripped)
        except ValueError:
            raise ConstantError("invalid_param_value", f"{text!r} is not an integer") from None
    if type_name == FLOAT:
        try:
            number = float(stripped)
        except ValueError:
            raise ConstantError("invalid_param_value", f"{text!r} is not a number") from None
        return _float(number)
    if type_name == BOOLEAN:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConstantError("invalid_param_value", f"{text!r} is not a boolean (use true or false)")
    return check_constant(type_name, text)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
