"""Plain HTTP on the websocket port, via websockets' `process_request` hook.

Every request (websocket handshake or not) first passes the AccessPolicy. Then `/ws` continues to
the websocket handshake; anything else is answered here and the connection closed:

    GET /                  the GUI (static/index.html), /app.js its script
    GET /object_info       the node catalogue (JSON)
    GET /history           every finished prompt ({ID: entry}); ?max_items=N for the latest N
    GET /history/ID        one entry ({ID: entry}, or {} when unknown, as ComfyUI answers)
    GET /queue             {"queue_running": [...], "queue_pending": [...]}
    GET /prompt            {"exec_info": {"queue_remaining": N}}
    GET /view?filename=NAME[&subfolder=DIR][&type=output]   a file from the output directory

/view serves only regular files inside the output directory: absolute names, `..`, symlinks that
lead out and hidden names (the server's own state lives in OUTPUT_DIR/.nodegraph) are refused.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import mimetypes
import os
import stat
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from nodegraph.engine.paths import confine
from nodegraph.errors import InputValueError
from nodegraph.server.security import valid_id

if TYPE_CHECKING:
    from nodegraph.server.app import NodegraphServer

WEBSOCKET_PATH = "/ws"
# Types a browser may render inline; anything else is sent as a download so an output file can
# never run script in the GUI's origin.
_INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "application/json", "text/plain"})
_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
_STATIC["/index.html"] = _STATIC["/"]

Query = dict[str, list[str]]


def response(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
    """An HTTP response that closes the connection (websockets serves one request per connection)."""
    phrase = HTTPStatus(status).phrase
    all_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),  # a ?token= must not leak through Referer
        ]
    )
    for name, value in (headers or {}).items():
        all_headers[name] = value
    return Response(status, phrase, all_headers, body)


def text_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return response(status, (message.rstrip("\n") + "\n").encode(), "text/plain; charset=utf-8", headers)


def json_response(data: Any, status: int = 200) -> Response:
    body = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"), default=str).encode()
    return response(status, body, "application/json")


class HttpRoutes:
    def __init__(self, server: NodegraphServer) -> None:
        self.server = server
        package = resources.files("nodegraph.server") / "static"
        self._static = {path: (package / name).read_bytes() for path, (name, _) in _STATIC.items()}
        self._routes: dict[str, Callable[[Query], Awaitable[Response]]] = {
            "/object_info": self._object_info,
            "/history": self._history,
            "/queue": self._queue,
            "/prompt": self._prompt,
            "/view": self._view,
        }

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' hook: a Response answers the request; None lets the websocket handshake go on."""
        url = urlsplit(request.path)
        query = parse_qs(url.query, keep_blank_values=True)
        refusal = self.server.policy.check(request.headers, query)
        if refusal is not None:
            extra = {"WWW-Authenticate": 'Bearer realm="nodegraph"'} if refusal.status == 401 else None
            return text_response(refusal.status, refusal.message, extra)
        wants_websocket = "websocket" in request.headers.get("Upgrade", "").lower()
        if url.path == WEBSOCKET_PATH:
            client_ids = query.get("clientId", [])
            if client_ids and not valid_id(client_ids[-1]):
                return text_response(400, "clientId must be 1-128 characters from A-Z, a-z, 0-9, '_' and '-'")
            if not wants_websocket:
                return text_response(426, "this is the websocket endpoint: connect to ws://HOST:PORT/ws?clientId=ID")
            if self.server.clients.connection_count() >= self.server.config.max_clients:
                return text_response(503, f"too many clients ({self.server.config.max_clients}); try again later")
            return None
        if wants_websocket:
            return text_response(404, f"no websocket here; the websocket endpoint is {WEBSOCKET_PATH}")
        if request.method != "GET":
            return text_response(405, f"{request.method} is not supported; this server answers GET", {"Allow": "GET"})
        if url.path in self._static:
            _, content_type = _STATIC[url.path]
            return response(200, self._static[url.path], content_type, {"Content-Security-Policy": _PAGE_POLICY})
        route = self._routes.get(url.path)
        if route is not None:
            return await route(query)
        if url.path.startswith("/history/"):
            return self._history_entry(url.path.removeprefix("/history/"))
        return text_response(404, f"no such page: {url.path[:200]}")

    async def _object_info(self, query: Query) -> Response:
        return json_response(self.server.catalogue_bytes())

    async def _history(self, query: Query) -> Response:
        raw = _single(query, "max_items")
        max_items = None
        if raw is not None:
            if not raw.isdigit() or int(raw) < 1:
                return text_response(400, "max_items must be a positive integer")
            max_items = int(raw)
        return json_response(self.server.history.snapshot(max_items))

    def _history_entry(self, prompt_id: str) -> Response:
        entry = self.server.history.get(prompt_id) if valid_id(prompt_id) else None
        return json_response({prompt_id: entry} if entry is not None else {})

    async def _queue(self, query: Query) -> Response:
        return json_response(self.server.queue_snapshot())

    async def _prompt(self, query: Query) -> Response:
        return json_response({"exec_info": {"queue_remaining": self.server.queue.remaining}})

    async def _view(self, query: Query) -> Response:
        filename = _single(query, "filename")
        subfolder = _single(query, "subfolder") or ""
        kind = _single(query, "type") or "output"
        if not filename:
            return text_response(400, "filename is required: /view?filename=NAME[&subfolder=DIR]&type=output")
        if kind != "output":
            return text_response(400, f"type={kind!r} is not served; only type=output (the output directory) is")
        name = f"{subfolder.rstrip('/')}/{filename}" if subfolder else filename
        base = self.server.output_dir
        try:
            path = confine(base, name, input_name="filename")
        except InputValueError as exc:
            return text_response(403, exc.message)
        if any(part.startswith(".") for part in PurePosixPath(path.relative_to(base.resolve())).parts):
            return text_response(403, f"{name!r} is a hidden file; hidden files are not served")
        limit = self.server.config.max_view_bytes
        try:
            body = await asyncio.to_thread(_read_regular_file, path, limit)
        except FileNotFoundError:
            return text_response(404, f"{name!r} not found in the output directory")
        except _TooLarge as exc:
            return text_response(413, f"{name!r} is {exc.size} bytes; /view serves files up to {limit} bytes")
        except OSError as exc:
            return text_response(403, f"{name!r} cannot be served: {exc.strerror or exc}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Content-Security-Policy": "sandbox; default-src 'none'"}
        if content_type in _INLINE_TYPES:
            headers["Content-Disposition"] = f'inline; filename="{_header_safe(path.name)}"'
        else:
            content_type = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{_header_safe(path.name)}"'
        return response(200, body, content_type, headers)


class _TooLarge(OSError):
    def __init__(self, size: int) -> None:
        super().__init__(errno.EFBIG, "file too large")
        self.size = size


def _read_regular_file(path: Path, limit: int) -> bytes:
    # O_NOFOLLOW: `path` is already resolved, so a symlink here would be one swapped in since.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device: nothing to serve
            raise FileNotFoundError(errno.ENOENT, "not a regular file")
        if info.st_size > limit:
            raise _TooLarge(info.st_size)
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew since fstat
        raise _TooLarge(len(data))
    return data


def _single(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _header_safe(name: str) -> str:
    return "".join(char if char.isprintable() and char not in '"\\' and ord(char) < 128 else "_" for char in name)
