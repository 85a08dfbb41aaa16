"""Connected clients by clientId, and sending frames to them in order without blocking the loop.

Frames are written synchronously (websockets' `broadcast`, which queues them on the transport in
call order), so a prompt's events reach its client in the order the engine emitted them and no
coroutine is needed per message. The price of writing without waiting is that a client that
stops reading makes the buffer grow; so previews (lossy by nature) are dropped once a client's
buffer passes a quarter of the limit, and a client past the whole limit is disconnected (1008).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, broadcast
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
        payload, text = frame
        if connection.protocol.state is not State.OPEN:
            return
        buffered = connection.transport.get_write_buffer_size()
        if buffered > self.max_buffer_bytes:
            self._disconnect_slow(connection, buffered)
            return
        if not text and buffered > self.max_buffer_bytes // 4:
            return  # a preview the client is too slow to take: the next one will do
        broadcast((connection,), payload, text=text)

    def send_to_client(self, client_id: str, frames: Sequence[Frame]) -> None:
        connections = self._by_id.get(client_id)
        if not connections:
            return  # the client left; its prompt's results stay in the history
        for connection in tuple(connections):
            for frame in frames:
                self.send(connection, frame)

    def broadcast(self, frame: Frame) -> None:
        for connections in tuple(self._by_id.values()):
            for connection in tuple(connections):
                self.send(connection, frame)

    def _disconnect_slow(self, connection: ServerConnection, buffered: int) -> None:
        logger.warning("disconnecting %s: %d bytes unsent, it is not reading", connection.remote_address, buffered)
        reason = f"client is not reading its messages ({buffered} bytes unsent)"
        task = asyncio.get_running_loop().create_task(connection.close(CloseCode.POLICY_VIOLATION, reason[:120]))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
