"""Files over HTTP: /upload/image, /upload/mask and /view, each confined to its directory.

    POST /upload/image   multipart: image (the file), type? (input|temp|output, default input), subfolder?,
                         overwrite? ("true"/"1")  -> {"name", "subfolder", "type"}
    POST /upload/mask    the same plus original_ref (JSON {filename, subfolder?, type?}): the mask's alpha
                         becomes the alpha channel of a copy of the original image
    GET  /view           ?filename=NAME&type=output|input|temp&subfolder=DIR[&channel=rgba|rgb|a]

Names are confined: no absolute paths, `..`, NUL, hidden parts (the server's state lives in OUTPUT/.nodegraph),
or symlinks leading out. An upload never replaces another file unless asked to: a name in use becomes
`NAME (1).EXT`, `NAME (2).EXT`, ... (created exclusively, so two uploads at once cannot collide); an
identical file already there is reused. /view streams files in chunks from a descriptor opened without
following symlinks, so a reader that does not read holds one chunk of memory, and at most
`max_view_streams` are served at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import mimetypes
import os
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from nodegraph.engine.paths import confine
from nodegraph.errors import InputValueError
from nodegraph.server.httpio import HttpError, json_reply, query_value

if TYPE_CHECKING:
    from nodegraph.server.app import NodegraphServer

CHUNK = 256 * 1024
# Types a browser may render inline; anything else is sent as a download so an output file can never run
# script in the GUI's origin.
_INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "application/json", "text/plain"})
_UPLOAD_FIELDS = frozenset({"image", "type", "subfolder", "overwrite", "original_ref"})


class FileRoutes:
    def __init__(self, server: NodegraphServer) -> None:
        self.server = server
        self._streams = 0

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_mask),
            ("GET", "/view", self.view),
        ]

    def directory(self, kind: str | None) -> Path:
        directories = self.server.file_directories()
        if kind not in directories:
            names = ", ".join(directories)
            raise HttpError(400, "invalid_type", f"type must be one of {names}, got {str(kind)[:40]!r}")
        return directories[kind]

    # ---------------------------------------------------------------- uploads

    async def upload_image(self, request: web.Request) -> web.Response:
        fields, data, filename = await self._read_upload(request)
        return json_reply(await self._store(fields, data, filename))

    async def upload_mask(self, request: web.Request) -> web.Response:
        fields, data, filename = await self._read_upload(request)
        raw = fields.get("original_ref")
        try:
            reference = json.loads(raw) if raw is not None else None
        except ValueError:
            reference = None
        if not isinstance(reference, dict) or not isinstance(reference.get("filename"), str):
            raise HttpError(400, "invalid_request", 'original_ref must be JSON {"filename", "subfolder"?, "type"?}')
        original = self._confined(
            self.directory(reference.get("type") or "input"),
            str(reference.get("subfolder") or ""),
            reference["filename"],
            must_exist=True,
        )
        combined = await asyncio.to_thread(_apply_mask, original, data, self.server.config.max_upload_bytes)
        return json_reply(await self._store(fields, combined, filename))

    async def _read_upload(self, request: web.Request) -> tuple[dict[str, str], bytes, str]:
        if not request.content_type.startswith("multipart/"):
            raise HttpError(400, "invalid_request", "send multipart/form-data with the file in the field 'image'")
        limit = self.server.config.max_upload_bytes
        try:
            return await self._read_parts(request, limit)
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            raise HttpError(400, "invalid_request", f"the multipart body is malformed: {str(exc)[:200]}") from None

    async def _read_parts(self, request: web.Request, limit: int) -> tuple[dict[str, str], bytes, str]:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        data: bytes | None = None
        filename = ""
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or part.name not in _UPLOAD_FIELDS:
                name = str(getattr(part, "name", ""))[:40]
                raise HttpError(400, "invalid_request", f"unexpected form field {name!r}")
            if part.name == "image":
                if data is not None:
                    raise HttpError(400, "invalid_request", "send one file per upload")
                data = await _read_part(part, limit)
                filename = part.filename or ""
            else:
                fields[part.name] = (await _read_part(part, 64 * 1024)).decode("utf-8", "replace")
        if data is None:
            raise HttpError(400, "invalid_request", "no file: put it in the form field 'image'")
        return fields, data, filename

    async def _store(self, fields: dict[str, str], data: bytes, filename: str) -> dict[str, str]:
        kind = fields.get("type") or "input"
        base = self.directory(kind)
        subfolder = fields.get("subfolder", "").rstrip("/")
        name = _safe_name(filename)
        target_dir = self._confined(base, subfolder, None) if subfolder else base.resolve()
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        await asyncio.to_thread(_check_image, data)
        stored = await asyncio.to_thread(_write_unique, target_dir, name, data, overwrite)
        return {"name": stored, "subfolder": subfolder, "type": kind}

    def _confined(self, base: Path, subfolder: str, filename: str | None, *, must_exist: bool = False) -> Path:
        name = f"{subfolder.strip('/')}/{filename}" if subfolder and filename else (filename or subfolder)
        try:
            path = confine(base, name, input_name="filename")
        except InputValueError as exc:
            raise HttpError(403, "path_not_allowed", exc.message) from None
        relative = PurePosixPath(path.relative_to(base.resolve()))
        if any(part.startswith(".") for part in relative.parts):
            raise HttpError(403, "path_not_allowed", f"{name!r} is hidden; hidden files are not served")
        if must_exist and not path.is_file():
            raise HttpError(404, "not_found", f"{name!r} not found")
        return path

    # ---------------------------------------------------------------- /view

    async def view(self, request: web.Request) -> web.StreamResponse:
        filename = query_value(request, "filename")
        if not filename:
            raise HttpError(400, "invalid_query", "filename is required: /view?filename=NAME&subfolder=DIR&type=output")
        kind = query_value(request, "type") or "output"
        base = self.directory(kind)
        subfolder = query_value(request, "subfolder") or ""
        from nodegraph.world.examples import EXAMPLES_DIR, PREFIX

        if kind == "input" and filename.startswith(PREFIX) and not subfolder:  # LoadImage's shipped examples
            base, filename = EXAMPLES_DIR, filename.removeprefix(PREFIX)
        channel = query_value(request, "channel")
        if channel not in (None, "rgba", "rgb", "a"):
            raise HttpError(400, "invalid_query", "channel must be rgba, rgb or a")
        path = self._confined(base, subfolder, filename)
        if self._streams >= self.server.config.max_view_streams:
            raise HttpError(503, "busy", "too many downloads at once; try again shortly", {"Retry-After": "1"})
        self._streams += 1
        try:
            try:
                descriptor = await asyncio.to_thread(_open_regular, path)
            except FileNotFoundError:
                raise HttpError(404, "not_found", f"{filename!r} not found") from None
            except OSError as exc:
                raise HttpError(403, "path_not_allowed", f"{filename!r} cannot be served: {exc.strerror}") from None
            if channel in ("rgb", "a"):
                return await self._channel(descriptor, path, channel)
            return await self._stream(request, descriptor, path)
        finally:
            self._streams -= 1

    async def _stream(self, request: web.Request, descriptor: int, path: Path) -> web.StreamResponse:
        try:
            size = os.fstat(descriptor).st_size
            response = web.StreamResponse(headers=_file_headers(path))
            response.content_length = size
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            while True:
                chunk = await loop.run_in_executor(None, os.read, descriptor, CHUNK)
                if not chunk:
                    break
                await response.write(chunk)  # waits while the client is not reading: one chunk held at most
            await response.write_eof()
            return response
        finally:
            os.close(descriptor)

    async def _channel(self, descriptor: int, path: Path, channel: str) -> web.Response:
        limit = self.server.config.max_upload_bytes
        try:
            body = await asyncio.to_thread(_extract_channel, descriptor, channel, limit)
        finally:
            os.close(descriptor)
        headers = _file_headers(path.with_suffix(".png"))
        return web.Response(body=body, headers=headers)


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        chunk = await part.read_chunk(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"the uploaded file is larger than {limit} bytes")
        chunks.append(chunk)


def _safe_name(filename: str) -> str:
    name = filename.strip()
    if (
        not name
        or name.startswith(".")
        or any(char in name for char in "/\\\x00")
        or len(name.encode("utf-8", "replace")) > 200
    ):
        raise HttpError(400, "invalid_filename", f"{filename[:60]!r} is not a usable file name")
    return name


def _check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HttpError(400, "invalid_image", f"the file is not a readable image: {exc}") from None


def _write_unique(directory: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write `data` as `name` in `directory`, or as `stem (N).ext` if the name is taken; returns the name used."""
    directory.mkdir(parents=True, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha256(data).digest()
    for counter in range(10_000):
        candidate = name if counter == 0 else f"{stem} ({counter}){suffix}"
        path = directory / candidate
        if overwrite and counter == 0:
            temporary = directory / f".{candidate}.{os.getpid()}.upload"
            temporary.write_bytes(data)
            os.replace(temporary, path)
            return candidate
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            if _same_content(path, digest, len(data)):
                return candidate
            continue
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return candidate
    raise HttpError(409, "name_taken", f"too many files named like {name!r}")


def _same_content(path: Path, digest: bytes, size: int) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != size:
            return False
        return hashlib.sha256(path.read_bytes()).digest() == digest
    except OSError:
        return False


def _open_regular(path: Path) -> int:
    # O_NOFOLLOW: `path` is already resolved, so a symlink here would be one swapped in since.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a directory, a FIFO, a device: nothing to serve
        os.close(descriptor)
        raise FileNotFoundError(errno.ENOENT, "not a regular file")
    return descriptor


def _file_headers(path: Path) -> dict[str, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    safe = "".join(char if char.isprintable() and char not in '"\\' and ord(char) < 128 else "_" for char in path.name)
    headers = {"Content-Security-Policy": "sandbox; default-src 'none'", "Cache-Control": "no-cache"}
    if content_type in _INLINE_TYPES:
        headers["Content-Disposition"] = f'inline; filename="{safe}"'
    else:
        content_type = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    headers["Content-Type"] = content_type
    return headers


def _extract_channel(descriptor: int, channel: str, limit: int) -> bytes:
    if os.fstat(descriptor).st_size > limit:
        raise HttpError(413, "too_large", "the file is too large to convert; ask for it without channel=")
    with os.fdopen(os.dup(descriptor), "rb") as handle:
        try:
            with Image.open(handle) as picture:
                picture = picture.convert("RGBA")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise HttpError(400, "invalid_image", f"not an image: {exc}") from None
    if channel == "rgb":
        picture = picture.convert("RGB")
    else:
        alpha = picture.getchannel("A")
        picture = Image.new("RGBA", picture.size, (0, 0, 0, 255))
        picture.putalpha(alpha)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _apply_mask(original: Path, mask_data: bytes, limit: int) -> bytes:
    if original.stat().st_size > limit:
        raise HttpError(413, "too_large", "the original image is too large")
    try:
        with Image.open(original) as picture:
            base = picture.convert("RGBA")
        with Image.open(io.BytesIO(mask_data)) as mask:
            alpha = mask.convert("RGBA").getchannel("A").resize(base.size)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise HttpError(400, "invalid_image", f"not an image: {exc}") from None
    base.putalpha(alpha)
    buffer = io.BytesIO()
    base.save(buffer, format="PNG")
    return buffer.getvalue()
