"""Connected clients by clientId, and sending frames to them in order without blocking the loop.

Frames are queued per connection and written at the end of the current loop iteration, all of a
connection's frames in one write: a run's burst of events, or the answers to a burst of requests,
costs one system call (and one wake-up of the client) instead of one per message. Frames are
written without waiting for the client (as websockets' `broadcast` does), so a client that stops
reading makes its buffer grow; previews (lossy by nature) are dropped once a client's buffer
passes a quarter of the limit, and a client past the whole limit is disconnected (1008).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State

logger = logging.getLogger("nodegraph.server")

# (payload, is_text): JSON messages are pre-encoded UTF-8 sent as text frames; previews are binary.
Frame = tuple[bytes, bool]


class ClientHub:
    """clientId -> open connections (a client may have several, e.g. two tabs, or reconnect)."""

    def __init__(self, max_buffer_bytes: int) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._by_id: dict[str, set[ServerConnection]] = {}
        self._outgoing: dict[ServerConnection, list[Frame]] = {}
        self._flush_scheduled = False
        self._closing: set[asyncio.Task[None]] = set()

    def add(self, client_id: str, connection: ServerConnection) -> None:
        self._by_id.setdefault(client_id, set()).add(connection)

    def remove(self, client_id: str, connection: ServerConnection) -> None:
        connections = self._by_id.get(client_id)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._by_id[client_id]

    def connection_count(self) -> int:
        return sum(len(connections) for connections in self._by_id.values())

    def send(self, connection: ServerConnection, frame: Frame) -> None:
        """Queue a frame for this connection; written (in order) at the end of this loop iteration."""
        queued = self._outgoing.get(connection)
        if queued is None:
            self._outgoing[connection] = [frame]
        else:
            queued.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_to_client(self, client_id: str, frames: Sequence[Frame]) -> None:
        connections = self._by_id.get(client_id)
        if not connections:
            return  # the client left; its prompt's results stay in the history
        for connection in connections:
            for frame in frames:
                self.send(connection, frame)

    def broadcast(self, frame: Frame) -> None:
        for connections in self._by_id.values():
            for connection in connections:
                self.send(connection, frame)

    def flush(self) -> None:
        """Write every queued frame now (also called at shutdown, before connections are closed)."""
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, {}
        for connection, frames in outgoing.items():
            self._write(connection, frames)

    def _write(self, connection: ServerConnection, frames: list[Frame]) -> None:
        if connection.protocol.state is not State.OPEN:
            return
        buffered = connection.transport.get_write_buffer_size()
        if buffered > self.max_buffer_bytes:
            self._disconnect_slow(connection, buffered)
            return
        previews = buffered <= self.max_buffer_bytes // 4  # else skip them: the next one will do
        protocol = connection.protocol
        try:
            for payload, text in frames:
                if text:
                    protocol.send_text(payload)
                elif previews:
                    protocol.send_binary(payload)
        except Exception as exc:  # the protocol refused (e.g. closing meanwhile): nothing more to send
            logger.debug("not sending to %s: %s", connection.remote_address, exc)
        chunks = protocol.data_to_send()
        transport = connection.transport
        if all(chunks):
            transport.write(b"".join(chunks))
            return
        for chunk in chunks:  # an empty chunk means end-of-stream (the protocol is closing)
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def _disconnect_slow(self, connection: ServerConnection, buffered: int) -> None:
        logger.warning("disconnecting %s: %d bytes unsent, it is not reading", connection.remote_address, buffered)
        reason = f"client is not reading its messages ({buffered} bytes unsent)"
        task = asyncio.get_running_loop().create_task(connection.close(CloseCode.POLICY_VIOLATION, reason[:120]))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
