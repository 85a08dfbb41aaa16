"""Connected websocket clients by clientId, and sending them frames in order without blocking the loop.

The policy on client ids (server/README.md states it for users):

- A client id is held by one open connection at a time. A connection that asks for an id another open
  connection holds is given a fresh id instead (its `status` message's `sid` says which, and ComfyUI's
  frontend adopts it), so knowing someone's id does not let a client listen to their events.
- Ids are never shown to other clients: the queue and history leave them out.

Each connection has its own outgoing queue drained by a writer task, so a client that reads slowly
delays only itself. What waits for it is counted: past a quarter of `max_buffer_bytes` its previews are
dropped (lossy by nature; the next one will do), past the whole of it the client is disconnected (1008).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

logger = logging.getLogger("nodegraph.server")


@dataclass(frozen=True, slots=True)
class Preview:
    """A preview image in both of ComfyUI's binary forms; each client gets the one its feature flags ask for."""

    plain: bytes
    tagged: bytes


# A frame: a JSON text message (str), a binary message (bytes), or a Preview.
Frame = str | bytes | Preview


def frame_size(frame: Frame) -> int:
    if isinstance(frame, Preview):
        return len(frame.tagged)
    return len(frame)


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    client_id: str
    flags: dict[str, Any] = field(default_factory=dict)
    outgoing: deque[Frame] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False

    @property
    def wants_tagged_previews(self) -> bool:
        return self.flags.get("supports_preview_metadata") is True


class ClientHub:
    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._by_id: dict[str, Connection] = {}
        self._writers: dict[Connection, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    def claim(self, ws: web.WebSocketResponse, wanted: str | None) -> Connection:
        """Register a connection under the id it asked for, or a fresh one if that id is held (see above)."""
        client_id = wanted if wanted and wanted not in self._by_id else uuid.uuid4().hex
        if wanted and client_id != wanted:
            logger.info("client id %s is in use by another connection; giving this one %s", wanted, client_id)
        connection = Connection(ws, client_id)
        self._by_id[client_id] = connection
        self._writers[connection] = asyncio.get_running_loop().create_task(self._writer(connection))
        return connection

    async def release(self, connection: Connection) -> None:
        if self._by_id.get(connection.client_id) is connection:
            del self._by_id[connection.client_id]
        writer = self._writers.pop(connection, None)
        if writer is not None:
            writer.cancel()

    def connection_count(self) -> int:
        return len(self._by_id)

    def connections(self) -> list[Connection]:
        return list(self._by_id.values())

    def send(self, connection: Connection, frames: Iterable[Frame]) -> None:
        """Queue frames for this connection, in order; its writer task sends them."""
        if connection.closing:
            return
        limit = self.max_buffer_bytes
        for frame in frames:
            size = frame_size(frame)
            if isinstance(frame, Preview) and connection.queued_bytes + size > limit // 4:
                continue  # the client is behind: skip previews rather than let them pile up
            connection.queued_bytes += size
            connection.outgoing.append(frame)
        if connection.queued_bytes > limit:
            self._disconnect_slow(connection)
            return
        connection.wakeup.set()

    def send_to_client(self, client_id: str | None, frames: Sequence[Frame]) -> None:
        connection = self._by_id.get(client_id) if client_id is not None else None
        if connection is not None:  # else the client left; its prompt's results stay in the history
            self.send(connection, frames)

    def broadcast(self, frame: Frame) -> None:
        for connection in list(self._by_id.values()):
            self.send(connection, (frame,))

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout`) until every connection's queued frames are written (for shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(connection.outgoing for connection in self._by_id.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def close_all(self, code: int, message: str) -> None:
        closing = [connection.ws.close(code=code, message=message.encode()) for connection in self.connections()]
        for connection in self.connections():
            connection.closing = True
        await asyncio.gather(*closing, return_exceptions=True)

    async def _writer(self, connection: Connection) -> None:
        ws = connection.ws
        try:
            while True:
                await connection.wakeup.wait()
                connection.wakeup.clear()
                while connection.outgoing:
                    frame = connection.outgoing.popleft()
                    connection.queued_bytes -= frame_size(frame)
                    if ws.closed:
                        connection.outgoing.clear()
                        connection.queued_bytes = 0
                        break
                    if isinstance(frame, str):
                        await ws.send_str(frame)
                    elif isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        tagged = connection.wants_tagged_previews
                        await ws.send_bytes(frame.tagged if tagged else frame.plain)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection broke while writing: the reader side will see it close
            logger.debug("stopped writing to client %s: %s", connection.client_id, exc)

    def _disconnect_slow(self, connection: Connection) -> None:
        buffered = connection.queued_bytes
        logger.warning("disconnecting client %s: %d bytes unsent, it is not reading", connection.client_id, buffered)
        connection.closing = True
        connection.outgoing.clear()
        connection.queued_bytes = 0
        reason = f"client is not reading its messages ({buffered} bytes unsent)"
        task = asyncio.get_running_loop().create_task(
            connection.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason[:120].encode())
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
