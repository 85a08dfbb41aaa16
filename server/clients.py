"""Connected websocket clients by clientId, and sending them frames in order without blocking the loop.

The policy on client ids (server/README.md states it for users):

- A client id is held by one open connection at a time. A connection that asks for an id another open
  connection holds is given a fresh id instead (its `status` message's `sid` says which, and ComfyUI's
  frontend adopts it), so knowing someone's id does not let a client listen to their events.
- Ids are never shown to other clients: the queue and history leave them out.

Frames are queued per connection and written at the end of the current loop iteration, all of a
connection's frames in one write: a run's burst of events costs one system call, not one per message
(aiohttp's `send_str` writes and may wait per frame, which doubled the server's cost per node on long
chains). The frames are framed here (RFC 6455, server to client: unmasked, uncompressed, as the
connection negotiated) and written to the connection's transport, between whole frames of aiohttp's own
(pings, close), all on the loop thread. Writing does not wait for the client, so a client that stops
reading makes its transport buffer grow: past a quarter of `max_buffer_bytes` its previews are dropped
(lossy by nature; the next one will do), past the whole of it the client is disconnected (1008).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

logger = logging.getLogger("nodegraph.server")

_TEXT, _BINARY = 0x1, 0x2


@dataclass(frozen=True, slots=True)
class Preview:
    """A preview image in both of ComfyUI's binary forms; each client gets the one its feature flags ask for."""

    plain: bytes
    tagged: bytes


@dataclass(frozen=True, slots=True)
class NodeState:
    """A progress_state message, encoded only when written: a later one for the same prompt in the same write
    supersedes it (the frontend applies only the latest state per animation frame anyway), so a run of many
    quick nodes costs one small object per node instead of an encoded message each."""

    prompt_id: str
    node: str
    value: float = 0
    max: float = 1

    def encode(self) -> str:
        from nodegraph.engine import events
        from nodegraph.server.protocol import encode

        state = events.node_progress(self.prompt_id, self.node, "running", self.value, self.max)
        return encode(*events.progress_state(self.prompt_id, {self.node: state}))


# A frame: a JSON text message (str), a binary message (bytes), a Preview or a NodeState.
Frame = str | bytes | Preview | NodeState


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked websocket frame (what a server sends)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    transport: Any  # asyncio.Transport of the upgraded connection
    client_id: str
    flags: dict[str, Any] = field(default_factory=dict)
    outgoing: list[Frame] = field(default_factory=list)
    closing: bool = False

    @property
    def wants_tagged_previews(self) -> bool:
        return self.flags.get("supports_preview_metadata") is True


class ClientHub:
    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._by_id: dict[str, Connection] = {}
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._closing: set[asyncio.Task[Any]] = set()

    def claim(self, ws: web.WebSocketResponse, transport: Any, wanted: str | None) -> Connection:
        """Register a connection under the id it asked for, or a fresh one if that id is held (see above)."""
        client_id = wanted if wanted and wanted not in self._by_id else uuid.uuid4().hex
        if wanted and client_id != wanted:
            logger.info("client id %s is in use by another connection; giving this one %s", wanted, client_id)
        connection = Connection(ws, transport, client_id)
        self._by_id[client_id] = connection
        return connection

    def release(self, connection: Connection) -> None:
        connection.closing = True
        if self._by_id.get(connection.client_id) is connection:
            del self._by_id[connection.client_id]

    def connection_count(self) -> int:
        return len(self._by_id)

    def connections(self) -> list[Connection]:
        return list(self._by_id.values())

    def send(self, connection: Connection, frames: Iterable[Frame]) -> None:
        """Queue frames for this connection; written (in order) at the end of this loop iteration."""
        if connection.closing:
            return
        if not connection.outgoing:
            self._dirty.append(connection)
        connection.outgoing.extend(frames)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_to_client(self, client_id: str | None, frames: Sequence[Frame]) -> None:
        connection = self._by_id.get(client_id) if client_id is not None else None
        if connection is not None:  # else the client left; its prompt's results stay in the history
            self.send(connection, frames)

    def broadcast(self, frame: Frame) -> None:
        for connection in list(self._by_id.values()):
            self.send(connection, (frame,))

    def flush(self) -> None:
        """Write every queued frame now (also called at shutdown, before connections are closed)."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            frames, connection.outgoing = connection.outgoing, []
            if not connection.closing:
                self._write(connection, frames)

    def _write(self, connection: Connection, frames: list[Frame]) -> None:
        transport = connection.transport
        if transport is None or transport.is_closing() or connection.ws.closed:
            return
        buffered = transport.get_write_buffer_size()
        if buffered > self.max_buffer_bytes:
            self._disconnect_slow(connection, buffered)
            return
        previews = buffered <= self.max_buffer_bytes // 4  # else skip them: the next one will do
        tagged = connection.wants_tagged_previews
        latest = _latest_states(frames)
        chunks = []
        for index, frame in enumerate(frames):
            if isinstance(frame, str):
                chunks.append(ws_frame(_TEXT, frame.encode()))
            elif isinstance(frame, bytes):
                chunks.append(ws_frame(_BINARY, frame))
            elif isinstance(frame, NodeState):
                if index in latest:
                    chunks.append(ws_frame(_TEXT, frame.encode().encode()))
            elif previews:
                chunks.append(ws_frame(_BINARY, frame.tagged if tagged else frame.plain))
        transport.write(b"".join(chunks))

    async def drain(self, timeout: float) -> None:
        """Write what is queued and wait (up to `timeout`) until the clients have taken it (for shutdown)."""
        self.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
            c.transport is not None and not c.transport.is_closing() and c.transport.get_write_buffer_size()
            for c in self._by_id.values()
        ):
            await asyncio.sleep(0.01)

    async def close_all(self, code: int, message: str) -> None:
        connections = self.connections()
        for connection in connections:
            connection.closing = True
        closing = [connection.ws.close(code=code, message=message.encode()) for connection in connections]
        await asyncio.gather(*closing, return_exceptions=True)

    def _disconnect_slow(self, connection: Connection, buffered: int) -> None:
        logger.warning("disconnecting client %s: %d bytes unsent, it is not reading", connection.client_id, buffered)
        connection.closing = True
        reason = f"client is not reading its messages ({buffered} bytes unsent)"
        task = asyncio.get_running_loop().create_task(
            connection.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason[:120].encode())
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _latest_states(frames: list[Frame]) -> set[int]:
    """Indexes of the NodeState frames not superseded by a later one of the same prompt in `frames`."""
    latest: set[int] = set()
    seen: set[str] = set()
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if isinstance(frame, NodeState) and frame.prompt_id not in seen:
            seen.add(frame.prompt_id)
            latest.add(index)
    return latest
