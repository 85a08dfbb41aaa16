"""JSON in and out of the server: strict parsing of client data, encoding that never fails.

Client JSON (HTTP bodies, websocket frames) is parsed strictly: NaN/Infinity and numbers that overflow a
float are refused, nesting deeper than Python can follow is refused, and so are lone UTF-16 surrogates
(`"\\ud800"` parses to a str that cannot be written as UTF-8: accepted, it would break every later write of
that prompt, from the history file to the PNG chunk). Outgoing JSON falls back to ASCII escapes for values
that cannot be UTF-8, so an encoder never raises on data the server already holds.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

from nodegraph.engine import events

# A JSON escape of a UTF-16 surrogate: only texts containing one need the deep check below.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JsonInputError(ValueError):
    """Client JSON the server refuses; the message says why (it is sent back)."""


def parse(text: str | bytes) -> Any:
    """Parse client JSON strictly (see the module docstring); JsonInputError says what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonInputError("the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge integer literals
        raise JsonInputError(f"not valid JSON: {_short(str(exc))}") from None
    if _SURROGATE_ESCAPE.search(text):
        where = _find_surrogate(value, "")
        if where is not None:
            raise JsonInputError(
                f"{where or 'the value'} contains a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF escape), "
                "which is not text; send valid Unicode"
            )
    return value


def _find_surrogate(value: Any, where: str, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return where if not _is_utf8_safe(value) else None
    if depth > 200:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if not _is_utf8_safe(key):
                return where or "a key"
            found = _find_surrogate(item, here, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_surrogate(item, f"{where}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def _is_utf8_safe(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a float")
    return value


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# One encoder for every message: json.dumps with options builds a new one per call, a third of the cost of
# a small message (and the server encodes one or two per node run).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON text; tensors and other objects are described, lone surrogates escaped, never raises."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError):
        value = events.jsonable(value)
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if not text.isascii() and not _is_utf8_safe(text):  # isascii: the common case costs one C scan
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)
    return text


def dump_bytes(value: Any) -> bytes:
    return dumps(value).encode("utf-8")


def write_atomic(path: Path, value: Any, *, durable: bool = False) -> int:
    """Write JSON so that a crash leaves the old file or the new one, never half of one; returns its size.

    Without `durable` there is no fsync: the rename is still atomic, and a killed process loses nothing
    (the page cache survives it); only a power cut may leave an empty file, which readers skip.
    """
    data = dump_bytes(value)
    try:
        return _write(path, data, durable)
    except FileNotFoundError:  # the folder is missing (made on first use, not checked on every write)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write(path, data, durable)


def _write(path: Path, data: bytes, durable: bool) -> int:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    return len(data)
