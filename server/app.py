"""NodegraphServer: the websocket endpoint, the prompt worker and the lifecycle tying them together.

    server = NodegraphServer(ServerConfig(port=0), engine)
    await server.start()          # loads history and the saved queue, binds, starts the worker
    ...                           # server.port is the bound port
    await server.shutdown()       # interrupt, save the queue, close clients with 1001

Threads: the event loop serves every socket; the worker thread takes prompts from the queue and runs
them on the shared Engine (which runs one workflow at a time); small workflows are validated on the
loop, large ones (or ones that fingerprint input files) on a validation thread so they never stall it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from nodegraph.engine.api import Engine
from nodegraph.engine.prepare import PreparedRun
from nodegraph.errors import ValidationIssue, WorkflowError
from nodegraph.server import protocol
from nodegraph.server.clients import ClientHub, Frame
from nodegraph.server.config import ServerConfig
from nodegraph.server.history import HistoryStore
from nodegraph.server.http import HttpRoutes
from nodegraph.server.protocol import (
    HistoryRequest,
    InterruptRequest,
    MessageError,
    PromptRequest,
    QueueRequest,
    encode,
    workflow_nodes,
)
from nodegraph.server.queue import PromptQueue, QueuedPrompt, QueueFull
from nodegraph.server.security import AccessPolicy, is_loopback
from nodegraph.server.worker import Outbox, PromptRunner, Worker

logger = logging.getLogger("nodegraph.server")

SHUTDOWN_REASON = "server shutting down"
INLINE_VALIDATION_NODES = 512  # larger workflows are validated on the validation thread
Handler = Callable[[Any, str], Awaitable[list[Frame]]]


class StartError(Exception):
    """The server cannot start (port taken, state directory unusable); the message says why."""


def _text(type_: str, data: dict[str, Any]) -> Frame:
    return (encode(type_, data), True)


class NodegraphServer:
    """See the module docstring. `engine` defaults to one built from the config (device, dirs)."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None) -> None:
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        if engine is None:
            config.input_dir.mkdir(parents=True, exist_ok=True)
            engine = Engine(config.device, input_dir=config.input_dir, output_dir=config.output_dir)
        self.engine = engine
        self.output_dir: Path = engine.output_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state_dir = config.state_dir if config.state_dir is not None else self.output_dir / ".nodegraph"
        self.state_dir = Path(state_dir).absolute()
        self.queue_file = self.state_dir / "queue.json"
        self.history = HistoryStore(self.state_dir / "history", config.history_size)
        self.queue = PromptQueue(config.max_queue)
        self.clients = ClientHub(config.max_client_buffer)
        self.policy = AccessPolicy(
            bound_to_loopback=is_loopback(config.host), token=config.token, allowed_origins=config.allowed_origins
        )
        self.http = HttpRoutes(self)
        self._runner = PromptRunner(engine, self.history, config.preview_every)
        self._validator: ThreadPoolExecutor | None = None
        self._ws: Server | None = None
        self._worker: Worker | None = None
        self._outbox: Outbox | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._force = asyncio.Event()
        self._catalogue: tuple[int, bytes] | None = None
        self._handlers: dict[str, Handler] = {
            "prompt": self._on_prompt,
            "interrupt": self._on_interrupt,
            "queue": self._on_queue,
            "history": self._on_history,
            "object_info": self._on_object_info,
        }

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the state, bind, start the worker; StartError says what stopped it."""
        try:
            loaded = self.history.load()
            self.queue.advance_numbers(self.history.max_number)
            reloaded = self.queue.load(self.queue_file, skip=self.history.__contains__)
        except OSError as exc:
            raise StartError(f"cannot use the state directory {self.state_dir}: {exc.strerror or exc}") from exc
        if loaded or reloaded:
            logger.info("history: %d finished prompt(s); queue: %d pending prompt(s) reloaded", loaded, reloaded)
        try:
            self._ws = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self.http.process_request,
                max_size=self.config.hard_message_bytes,
                # Messages are small and mostly local: deflating each one costs more CPU than it saves.
                compression=None,
                ping_interval=self.config.ping_interval,
                server_header="nodegraph",
            )
        except OSError as exc:  # e.g. the port is taken, or the address is not this machine's
            where = f"{self.config.host}:{self.config.port}"
            raise StartError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        loop = asyncio.get_running_loop()
        self._validator = ThreadPoolExecutor(1, thread_name_prefix="nodegraph-validate")
        self._outbox = Outbox(loop, self._deliver)
        self._worker = Worker(self.queue, self._runner, self._outbox, loop)
        self._worker.start()

    @property
    def port(self) -> int:
        assert self._ws is not None, "start() first"
        return int(self._ws.sockets[0].getsockname()[1])

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self, reason: str = SHUTDOWN_REASON, timeout: float | None = None) -> None:
        """Interrupt the running prompt, save the pending queue, close every client with 1001.

        Waits up to `timeout` (default: config.shutdown_timeout) for the interrupted run to stop, so
        its client still receives execution_interrupted and its history entry is written.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        try:
            self.queue.close()
            running = self.queue.running
            if running is not None:
                logger.info("interrupting prompt %s for shutdown", running.prompt_id)
                running.interrupt.set()
            if self._worker is not None:
                forced = asyncio.ensure_future(self._force.wait())
                stopped = self._worker.stopped
                await asyncio.wait({stopped, forced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                forced.cancel()
                if not stopped.done() and running is not None:
                    logger.error("prompt %s did not stop in time; shutting down without it", running.prompt_id)
            if self._outbox is not None:
                self._outbox.flush()  # the interrupted run's last events, before the connections close
            self.clients.flush()
            try:
                saved = self.queue.save(self.queue_file)
                if saved:
                    logger.info("saved %d pending prompt(s) to %s", saved, self.queue_file)
            except OSError as exc:
                logger.error("could not save the pending queue to %s: %s", self.queue_file, exc)
            if self._ws is not None:
                self._ws.close(code=CloseCode.GOING_AWAY, reason=reason)
                await self._ws.wait_closed()
        finally:
            if self._validator is not None:
                self._validator.shutdown(wait=False, cancel_futures=True)
            self._closed.set()

    def force_shutdown(self) -> None:
        """Stop waiting for the interrupted run (e.g. on a second Ctrl-C)."""
        self._force.set()

    # ---------------------------------------------------------------- the worker's output

    def _deliver(self, batches: list[tuple[str, list[Frame]]], status_due: bool) -> None:
        """(Loop) what the worker produced since the last delivery, in order; then the queue status."""
        for client_id, frames in batches:
            self.clients.send_to_client(client_id, frames)
        if status_due:
            self._send_status()

    # ---------------------------------------------------------------- connections

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        query = parse_qs(urlsplit(connection.request.path).query)
        client_id = (query.get("clientId") or [uuid.uuid4().hex])[-1]
        self.clients.add(client_id, connection)
        try:
            self.clients.send(connection, _text("status", protocol.status_data(self.queue.remaining, client_id)))
            async for message in connection:
                for frame in await self._answer(message, client_id):
                    self.clients.send(connection, frame)
        except ConnectionClosed:
            pass  # the client went away (or broke the protocol, which websockets answered already)
        finally:
            self.clients.remove(client_id, connection)

    async def _answer(self, message: str | bytes, client_id: str) -> list[Frame]:
        """The replies to one client frame; never raises, so one bad message cannot end a connection."""
        request_type: str | None = None
        try:
            if not isinstance(message, str):
                raise MessageError(
                    "binary_not_accepted", "binary frames are not accepted; send JSON text frames {type, data}"
                )
            limit = self.config.max_message_bytes
            if len(message) > limit or (len(message) * 4 > limit and len(message.encode()) > limit):
                raise MessageError("message_too_large", f"the message is larger than {limit} bytes")
            request_type, request = protocol.parse_message(message)
            return await self._handlers[request_type](request, client_id)
        except MessageError as exc:
            return [(protocol.error_message(exc), True)]
        except Exception:
            logger.exception("failed to answer a %s message", request_type or "client")
            error = MessageError("internal_error", "the server failed to handle this message", request_type)
            return [(protocol.error_message(error), True)]

    # ---------------------------------------------------------------- message handlers

    async def _on_prompt(self, request: PromptRequest, client_id: str) -> list[Frame]:
        prompt_id = request.prompt_id or uuid.uuid4().hex
        refusal = self._prompt_refusal(prompt_id)
        if refusal is not None:
            return [refusal]
        if self._cheap_to_validate(request.prompt):
            prepared, issues = self._prepare(request.prompt, request.params)
        else:
            assert self._validator is not None
            loop = asyncio.get_running_loop()
            prepared, issues = await loop.run_in_executor(
                self._validator, self._prepare, request.prompt, request.params
            )
            refusal = self._prompt_refusal(prompt_id)  # again: the queue may have changed meanwhile
            if refusal is not None:
                return [refusal]
        if issues:
            count = len(issues)
            message = f"invalid workflow ({count} problem{'s' if count != 1 else ''})"
            nodes = workflow_nodes(request.prompt)
            frame = protocol.prompt_error("invalid_prompt", message, prompt_id=prompt_id, issues=issues, nodes=nodes)
            return [(frame, True)]
        item = QueuedPrompt(prompt_id, self.queue.next_number(), client_id, request.prompt, request.params or {},
                            prepared=prepared)
        try:
            self.queue.put(item)
        except QueueFull as exc:
            return [(protocol.prompt_error("queue_full", str(exc), prompt_id=prompt_id), True)]
        self._send_status()
        # No await between put() and this reply being queued for the client, and the worker's events
        # reach the loop only through a callback that runs later: prompt_queued precedes them.
        return [_text("prompt_queued", {"prompt_id": prompt_id, "number": item.number})]

    def _prompt_refusal(self, prompt_id: str) -> Frame | None:
        if self._closing:
            return (protocol.prompt_error("server_shutting_down", SHUTDOWN_REASON, prompt_id=prompt_id), True)
        if self.queue.knows(prompt_id) or prompt_id in self.history:
            message = f"prompt_id {prompt_id!r} is already in use; omit prompt_id to get a fresh one"
            return (protocol.prompt_error("duplicate_prompt_id", message, prompt_id=prompt_id), True)
        if self.queue.is_full():
            message = f"the queue is full ({self.queue.max_pending} prompts pending); try again later"
            return (protocol.prompt_error("queue_full", message, prompt_id=prompt_id), True)
        return None

    def _cheap_to_validate(self, prompt: dict[str, Any]) -> bool:
        """Whether validating this prompt on the loop thread costs less than handing it to a thread.

        Validation is pure Python at a few microseconds per node, while each thread hand-off is a
        wake-up that, on a busy machine, can wait for a whole scheduler time slice. Large workflows
        and ones that fingerprint input files (reading them) still go to the validation thread.
        """
        nodes = workflow_nodes(prompt)
        if len(nodes) > INLINE_VALIDATION_NODES:
            return False
        registry = self.engine.registry
        for node in nodes.values():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            spec = registry.get(class_type) if isinstance(class_type, str) else None
            if spec is not None and spec.has_fingerprint:
                return False
        return True

    def _prepare(
        self, prompt: dict[str, Any], params: dict[str, Any] | None
    ) -> tuple[PreparedRun | None, list[ValidationIssue]]:
        """The prepared run the worker will execute, or the issues that refuse the prompt."""
        try:
            prepared = self.engine.prepare(prompt, params)
            return prepared, self.engine.validate(prepared)
        except WorkflowError as exc:
            return None, exc.errors
        except Exception as exc:  # validation itself broke: refuse the prompt, say why
            logger.exception("validating a prompt failed")
            return None, [ValidationIssue(type="validation_failed", message=f"{type(exc).__name__}: {exc}")]

    async def _on_interrupt(self, request: InterruptRequest, client_id: str) -> list[Frame]:
        running = self.queue.running
        reason = None
        if running is None:
            reason = "nothing is running"
        elif request.prompt_id is not None and request.prompt_id != running.prompt_id:
            if request.prompt_id in {item.prompt_id for item in self.queue.pending}:
                reason = "that prompt is pending, not running; remove it with {type: queue, data: {delete: [ID]}}"
            else:
                reason = "that prompt is not running"
        if reason is not None:
            return [_text("interrupt", {"prompt_id": request.prompt_id, "interrupted": False, "reason": reason})]
        assert running is not None
        running.interrupt.set()  # this prompt's own flag: it cannot stop the next one by accident
        return [_text("interrupt", {"prompt_id": running.prompt_id, "interrupted": True})]

    async def _on_queue(self, request: QueueRequest, client_id: str) -> list[Frame]:
        extra: dict[str, Any] = {}
        if request.clear or request.delete:
            removed = self.queue.clear() if request.clear else []
            refused: dict[str, str] = {}
            if request.delete:
                more, refused = self.queue.remove(request.delete)
                removed += more
                if request.clear:  # cleared already: not "not in the queue"
                    cleared = {item.prompt_id for item in removed}
                    refused = {key: why for key, why in refused.items() if key not in cleared}
            for item in removed:
                self.clients.send_to_client(item.client_id, [_text("prompt_deleted", {"prompt_id": item.prompt_id})])
            if removed:
                self._send_status()
            extra = {"deleted": [item.prompt_id for item in removed], "not_deleted": refused}
        return [_text("queue", {**self.queue_snapshot(), **extra})]

    async def _on_history(self, request: HistoryRequest, client_id: str) -> list[Frame]:
        if request.prompt_id is not None:
            entry = self.history.get(request.prompt_id)
            return [_text("history", {request.prompt_id: entry} if entry is not None else {})]
        return [_text("history", self.history.snapshot(request.max_items))]

    async def _on_object_info(self, request: BaseModel, client_id: str) -> list[Frame]:
        catalogue = self.catalogue_bytes()
        return [(b'{"type":"object_info","data":' + catalogue + b"}", True)]

    # ---------------------------------------------------------------- shared views

    def catalogue_bytes(self) -> bytes:
        """The node catalogue as JSON, encoded once per registry version."""
        registry = self.engine.registry
        cached = self._catalogue
        if cached is None or cached[0] != registry.version:
            body = json.dumps(registry.catalogue(), separators=(",", ":"), ensure_ascii=False, default=str).encode()
            cached = self._catalogue = (registry.version, body)
        return cached[1]

    def queue_snapshot(self) -> dict[str, Any]:
        running, pending = self.queue.snapshot()
        return {
            "queue_running": [running.summary()] if running is not None else [],
            "queue_pending": [item.summary() for item in pending],
        }

    def _send_status(self) -> None:
        # Sent at once with the value of the moment (writes are batched per loop iteration anyway),
        # so every change the loop makes is seen by clients in order, none lost to a later one.
        self.clients.broadcast(_text("status", protocol.status_data(self.queue.remaining)))
