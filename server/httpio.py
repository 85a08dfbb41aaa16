"""HTTP helpers shared by the routes: JSON replies, errors with a clear status, strict query and body parsing.

Every refusal is `{"error": {"type": CODE, "message": TEXT}}` with a 4xx status (ComfyUI's error object,
so its clients show the message); handlers raise `HttpError` and the server's middleware answers it.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from nodegraph.server import jsonio

_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() accepts "²" and "٣", int() then fails or not


class HttpError(Exception):
    """A request the server refuses: status, a stable code and a message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsonio.dump_bytes(data), status=status, content_type="application/json")


def raw_json_reply(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_reply(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    reply = json_reply({"error": {"type": code, "message": message, "details": "", "extra_info": {}}}, status)
    for name, value in (headers or {}).items():
        reply.headers[name] = value
    return reply


def query_value(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once (400 if repeated: which one would count is ambiguous)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise HttpError(400, "invalid_query", f"the query parameter {name!r} is given {len(values)} times")
    return values[0] if values else None


def query_int(request: web.Request, name: str, *, minimum: int, maximum: int) -> int | None:
    raw = query_value(request, name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise HttpError(
            400, "invalid_query", f"{name} must be a whole number from {minimum} to {maximum}, got {raw[:40]!r}"
        )
    return int(raw)


async def read_json(request: web.Request, limit: int, *, allow_empty: bool = False) -> Any:
    """The request body as strict JSON (see jsonio); 413 past `limit` bytes, 400 if it is not JSON."""
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, "body_too_large", f"the request body is {request.content_length} bytes; at most {limit}")
    body = await read_body(request, limit)
    if not body.strip():
        if allow_empty:
            return {}
        raise HttpError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return jsonio.parse(body)
    except jsonio.JsonInputError as exc:
        raise HttpError(400, "invalid_json", f"the request body is {exc}" if "JSON" in str(exc) else str(exc)) from None


async def read_body(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_object(value: Any, what: str = "the request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__
        raise HttpError(400, "invalid_request", f"{what} must be a JSON object, got {kind}")
    return value
