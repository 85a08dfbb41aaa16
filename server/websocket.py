"""The websocket endpoint, /ws?clientId=ID: ComfyUI's events out, nodegraph's request messages in.

On connect the server sends `status` `{"status": {"exec_info": {"queue_remaining": N}}, "sid": ID}`, where
ID is the client id this connection holds (the one asked for, unless another open connection holds it:
see server/clients.py). A client's first message may be `feature_flags` (ComfyUI's negotiation: the server
answers with its own flags; `supports_preview_metadata` switches previews to the node-tagged form). Every
other message is a request (server/protocol.py) answered on the same connection; a message the server
cannot use gets an `error` message and the connection stays open.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from nodegraph.server import jsonio, protocol
from nodegraph.server.clients import Connection, Frame
from nodegraph.server.httpio import HttpError, query_value
from nodegraph.server.protocol import MessageError, encode
from nodegraph.server.security import valid_id

if TYPE_CHECKING:
    from nodegraph.server.app import NodegraphServer

logger = logging.getLogger("nodegraph.server")


class WebsocketEndpoint:
    def __init__(self, server: NodegraphServer) -> None:
        self.server = server
        self._handlers = {
            "feature_flags": self._on_feature_flags,
            "prompt": self._on_prompt,
            "interrupt": self._on_interrupt,
            "queue": self._on_queue,
            "history": self._on_history,
            "object_info": self._on_object_info,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        wanted = query_value(request, "clientId")
        if wanted is not None and wanted != "" and not valid_id(wanted):
            raise HttpError(400, "invalid_client_id", "clientId must be 1-128 characters from A-Z, a-z, 0-9, '_', '-'")
        config = self.server.config
        ws = web.WebSocketResponse(
            max_msg_size=config.hard_message_bytes,
            heartbeat=config.ping_interval,
            compress=False,  # messages are small and mostly local: deflating costs more CPU than it saves
        )
        if not ws.can_prepare(request).ok:
            raise HttpError(426, "upgrade_required", "this is the websocket endpoint: connect to ws://HOST:PORT/ws")
        if self.server.clients.connection_count() >= config.max_clients:
            raise HttpError(503, "too_many_clients", f"too many clients ({config.max_clients}); try again later")
        if self.server.closing:
            raise HttpError(503, "shutting_down", "the server is shutting down")
        await ws.prepare(request)
        clients = self.server.clients
        connection = clients.claim(ws, request.transport, wanted or None)
        try:
            status = protocol.status_data(self.server.queue.remaining, connection.client_id)
            clients.send(connection, [encode("status", status)])
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    clients.send(connection, await self._answer(message.data, connection))
                elif message.type == WSMsgType.BINARY:
                    error = MessageError(
                        "binary_not_accepted", "binary frames are not accepted; send JSON text frames {type, data}"
                    )
                    clients.send(connection, [protocol.error_message(error)])
                elif message.type == WSMsgType.ERROR:
                    logger.debug("websocket of client %s failed: %s", connection.client_id, ws.exception())
                    break
        finally:
            clients.release(connection)
        return ws

    async def _answer(self, text: str, connection: Connection) -> list[Frame]:
        """The replies to one client frame; never raises, so one bad message cannot end a connection."""
        request_type: str | None = None
        try:
            limit = self.server.config.max_message_bytes
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit):
                raise MessageError("message_too_large", f"the message is larger than {limit} bytes")
            request_type, request = protocol.parse_message(text)
            return await self._handlers[request_type](request, connection)
        except MessageError as exc:
            return [protocol.error_message(exc)]
        except Exception:
            logger.exception("failed to answer a %s message", request_type or "client")
            error = MessageError("internal_error", "the server failed to handle this message", request_type)
            return [protocol.error_message(error)]

    async def _on_feature_flags(self, request: Any, connection: Connection) -> list[Frame]:
        flags = request.model_dump()
        if len(jsonio.dumps(flags)) > protocol.MAX_FLAGS_BYTES:
            raise MessageError("invalid_fields", f"feature_flags are larger than {protocol.MAX_FLAGS_BYTES} bytes")
        connection.flags = flags
        return [encode("feature_flags", self.server.features())]

    async def _on_prompt(self, request: protocol.PromptRequest, connection: Connection) -> list[Frame]:
        outcome = await self.server.submit(request, connection.client_id)
        if outcome.status == 200:
            # No await between the queue's put and this reply being queued for the client, and the worker's
            # events reach the loop only through a callback that runs later: prompt_queued precedes them.
            return [encode("prompt_queued", outcome.body)]
        return [encode("prompt_error", {**outcome.body, "prompt_id": outcome.prompt_id})]

    async def _on_interrupt(self, request: protocol.InterruptRequest, connection: Connection) -> list[Frame]:
        return [encode("interrupt", self.server.interrupt(request.prompt_id))]

    async def _on_queue(self, request: protocol.QueueRequest, connection: Connection) -> list[Frame]:
        if request.clear or request.delete:
            return [encode("queue", self.server.change_queue(request.clear, request.delete or []))]
        return [encode("queue", self.server.queue_snapshot())]

    async def _on_history(self, request: protocol.HistoryRequest, connection: Connection) -> list[Frame]:
        history = self.server.history
        if request.prompt_id is not None:
            entry = history.get(request.prompt_id)
            return [encode("history", {request.prompt_id: entry} if entry is not None else {})]
        config = self.server.config
        size = min(request.max_items or config.history_page, config.history_page)
        page = history.page(size, request.offset, config.max_history_reply_bytes)
        return [encode("history", page.entries)]

    async def _on_object_info(self, request: Any, connection: Connection) -> list[Frame]:
        return ['{"type":"object_info","data":' + self.server.object_info_bytes().decode() + "}"]
