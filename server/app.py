"""NodegraphServer: ComfyUI's HTTP and websocket API on aiohttp, the prompt worker, and the lifecycle.

    server = NodegraphServer(ServerConfig(port=0), engine)
    await server.start()          # loads history, recovers the queue journal, binds, starts the worker
    ...                           # server.port is the bound port
    await server.shutdown()       # interrupt, keep the pending queue, close clients with 1001

Threads: the event loop serves every request and socket; the worker thread takes prompts from the queue
and runs them on the shared Engine (one workflow at a time); small workflows are validated on the loop,
large ones (or ones that read input files) on a validation thread so they never stall it. With
`--backend ray` the engine is a ClusterEngine and a PoolWorker runs as many prompts at once as its pool
has workers (worker.py); the server shuts the pool down with itself.

Routes (each also under /api/): api_routes.py (prompts, queue, history, jobs, nodes, system), file_routes.py
(uploads, /view), frontend.py (the ComfyUI frontend, settings, user data), websocket.py (/ws). Every request
first passes the AccessPolicy (security.py) in the `guard` middleware, which also turns every refusal into a
JSON error with a 4xx status and any bug into a 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from nodegraph.engine import events
from nodegraph.engine.api import Engine
from nodegraph.engine.node import NodeSpec
from nodegraph.engine.prepare import PreparedRun
from nodegraph.errors import ValidationIssue, WorkflowError
from nodegraph.server import jsonio, protocol
from nodegraph.server.api_routes import ApiRoutes
from nodegraph.server.clients import ClientHub, Frame
from nodegraph.server.config import ServerConfig
from nodegraph.server.file_routes import FileRoutes
from nodegraph.server.frontend import FrontendRoutes, frontend_version
from nodegraph.server.history import HistoryStore
from nodegraph.server.httpio import HttpError, error_reply
from nodegraph.server.object_info import node_info
from nodegraph.server.protocol import encode, workflow_nodes
from nodegraph.server.queue import PromptQueue, QueuedPrompt, QueueFull
from nodegraph.server.security import COOKIE, AccessPolicy, is_loopback
from nodegraph.server.ui_workflow import to_ui
from nodegraph.server.websocket import WebsocketEndpoint
from nodegraph.server.worker import Outbox, PoolWorker, PromptRunner, Worker, history_entry
from nodegraph.threads import ThreadPolicy

logger = logging.getLogger("nodegraph.server")

SHUTDOWN_REASON = "server shutting down"
INLINE_VALIDATION_NODES = 512  # larger workflows are validated on the validation thread
MAX_PNGINFO_KEYS = 16
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_REPO_WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


class StartError(Exception):
    """The server cannot start (port taken, state directory unusable); the message says why."""


@dataclass
class Outcome:
    """The answer to a submission: HTTP status and ComfyUI's body (what the websocket reply carries too)."""

    status: int
    body: dict[str, Any]
    prompt_id: str


class NodegraphServer:
    """See the module docstring. `engine` defaults to one built from the config (device, dirs)."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None) -> None:
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self._owns_engine = engine is None  # an engine we built is ours to close (the Ray pool)
        if engine is None:
            config.input_dir.mkdir(parents=True, exist_ok=True)
            engine = _engine(config)
        self.engine = engine
        # The Ray backend's pool of workers (None with the local backend): it sets how many prompts run at once.
        self.pool: Any = getattr(engine, "pool", None)
        self.output_dir: Path = engine.output_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state_dir = config.state_dir if config.state_dir is not None else self.output_dir / ".nodegraph"
        self.state_dir = Path(state_dir).absolute()
        self.temp_dir = Path(config.temp_dir).absolute() if config.temp_dir else self.state_dir / "temp"
        self.workflows_dir: Path | None = _REPO_WORKFLOWS if _REPO_WORKFLOWS.is_dir() else None
        self.history = HistoryStore(self.state_dir / "history", config.history_size)
        self.queue = PromptQueue(config.max_queue, self.state_dir)
        self.clients = ClientHub(config.max_client_buffer)
        self.policy = AccessPolicy(
            bound_to_loopback=is_loopback(config.host), token=config.token, allowed_origins=config.allowed_origins
        )
        self.frontend = FrontendRoutes(self)
        self.frontend_version = frontend_version()
        self.websocket = WebsocketEndpoint(self)
        # Ray's workers run the prompts in their own processes: only the local backend's threads are sized here
        threads = ThreadPolicy() if config.size_threads and self.pool is None else None
        self._runner = PromptRunner(engine, self.history, config.preview_every, threads)
        self._validator: ThreadPoolExecutor | None = None
        self._web: web.AppRunner | None = None
        self._port: int | None = None
        self._worker: Worker | PoolWorker | None = None
        self._outbox: Outbox | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._force = asyncio.Event()
        self._catalogue: tuple[int, bytes] | None = None
        self._object_info: tuple[Any, bytes] | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the state, bind, start the worker; StartError says what stopped it."""
        try:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            loaded = self.history.load()
            self.queue.advance_numbers(self.history.max_number)
            recovered = self.queue.recover(self.history.__contains__)
        except OSError as exc:
            raise StartError(f"cannot use the state directory {self.state_dir}: {exc.strerror or exc}") from exc
        for item in recovered.cut_off:
            self._record_cut_off(item)
        if loaded or recovered.requeued or recovered.already_done:
            logger.info(
                "history: %d finished prompt(s); queue: %d pending prompt(s) reloaded, %d already finished",
                loaded,
                recovered.requeued,
                recovered.already_done,
            )
        self._web = web.AppRunner(self._application(), handle_signals=False, access_log=None, shutdown_timeout=5)
        await self._web.setup()
        site = web.TCPSite(self._web, self.config.host, self.config.port, backlog=512)
        try:
            await site.start()
        except OSError as exc:  # e.g. the port is taken, or the address is not this machine's
            await self._web.cleanup()
            where = f"{self.config.host}:{self.config.port}"
            raise StartError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert server is not None
        self._port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        self._validator = ThreadPoolExecutor(1, thread_name_prefix="nodegraph-validate")
        self._outbox = Outbox(loop, self._deliver)
        if self.pool is not None:
            self._worker = PoolWorker(self.queue, self._runner, self._outbox, loop, lambda: self.pool.target)
        else:
            self._worker = Worker(self.queue, self._runner, self._outbox, loop)
        self._worker.start()

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.max_body_bytes)
        routes = [*ApiRoutes(self).routes(), *FileRoutes(self).routes(), *self.frontend.api_routes()]
        for prefix in ("/api", ""):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        app.router.add_get("/ws", self.websocket.handle)
        app.router.add_get("/api/ws", self.websocket.handle)
        self.frontend.static_routes(app)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        credentials = {"token": request.query.getall("token", [])}
        if COOKIE in request.cookies:
            credentials[COOKIE] = [request.cookies[COOKIE]]
        refusal = self.policy.check(request.headers, credentials)
        if refusal is not None:
            extra = {"WWW-Authenticate": 'Bearer realm="nodegraph"'} if refusal.status == 401 else None
            codes = {400: "bad_request", 401: "token_required", 403: "forbidden"}
            response: web.StreamResponse = error_reply(
                refusal.status, codes.get(refusal.status, "refused"), refusal.message, extra
            )
        else:
            try:
                response = await handler(request)
                if isinstance(response, web.HTTPException) and response.status >= 400:
                    raise response  # returned rather than raised (aiohttp's static files do): answer it alike
            except HttpError as exc:
                response = error_reply(exc.status, exc.code, exc.message, exc.headers)
            except protocol.MessageError as exc:
                response = error_reply(400, exc.code, exc.message)
            except web.HTTPException as exc:  # the router's 404/405, aiohttp's 413
                if exc.status < 400:
                    raise
                response = _http_error(request, exc)
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception:
                logger.exception("failed to answer %s %s", request.method, request.path[:200])
                response = error_reply(500, "internal_error", "the server failed to answer this request")
        if refusal is None and self.policy.requires_token and request.path == "/" and credentials["token"]:
            response.set_cookie(COOKIE, credentials["token"][0], httponly=True, samesite="Strict", path="/")
        if not response.prepared:
            headers = response.headers
            headers.setdefault("X-Content-Type-Options", "nosniff")
            headers.setdefault("Referrer-Policy", "no-referrer")  # a ?token= must not leak through Referer
            if headers.get("Content-Type", "").startswith("application/json"):
                headers.setdefault("Cache-Control", "no-store")
        return response

    @property
    def port(self) -> int:
        assert self._port is not None, "start() first"
        return self._port

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self, reason: str = SHUTDOWN_REASON, timeout: float | None = None) -> None:
        """Interrupt the running prompts, keep the pending queue, close every client with 1001.

        Waits up to `timeout` (default: config.shutdown_timeout) for the interrupted runs to stop, so their
        clients still receive execution_interrupted and their history entries are written. A Ray pool the
        server started is shut down then.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        try:
            self.queue.close()
            running = self.queue.running
            for item in running:
                logger.info("interrupting prompt %s for shutdown", item.prompt_id)
                item.interrupt.set()
            if self._worker is not None:
                forced = asyncio.ensure_future(self._force.wait())
                stopped = self._worker.stopped
                await asyncio.wait({stopped, forced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                forced.cancel()
                if not stopped.done():
                    for item in self.queue.running:
                        logger.error("prompt %s did not stop in time; shutting down without it", item.prompt_id)
            if self._owns_engine and self.pool is not None:
                # The workers go with the server (a run that ignored the interrupt ends as a failed run).
                await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
            if self._outbox is not None:
                self._outbox.flush()  # the interrupted run's last events, before the connections close
            await self.clients.drain(timeout=2.0)
            pending = len(self.queue.pending)
            if pending:
                logger.info("%d pending prompt(s) stay queued in %s for the next start", pending, self.state_dir)
            await self.clients.close_all(WSCloseCode.GOING_AWAY, reason)
            if self._web is not None:
                await self._web.cleanup()
        finally:
            if self._validator is not None:
                self._validator.shutdown(wait=False, cancel_futures=True)
            self._closed.set()

    def force_shutdown(self) -> None:
        """Stop waiting for the interrupted run (e.g. on a second Ctrl-C)."""
        self._force.set()

    def _record_cut_off(self, item: QueuedPrompt) -> None:
        """A prompt a hard kill stopped mid-run: its history says so (it is not run again)."""
        error = RuntimeError("the server stopped while this prompt ran (killed or crashed); it was not run again")
        messages = [list(events.execution_error(item.prompt_id, error))]
        entry = history_entry(item, "error", messages, {}, started=item.submitted_at, seq=self.history.next_seq())
        self.history.add(item.prompt_id, entry)
        self.queue.finish_file(item)

    # ---------------------------------------------------------------- the worker's output

    def _deliver(self, batches: list[tuple[str | None, list[Frame]]], status_due: bool) -> None:
        """(Loop) what the worker produced since the last delivery, in order; then the queue status."""
        for client_id, frames in batches:
            self.clients.send_to_client(client_id, frames)
        if status_due:
            self._send_status()

    def _send_status(self) -> None:
        # Sent at once with the value of the moment, so every change the loop makes is seen in order.
        self.clients.broadcast(encode("status", protocol.status_data(self.queue.remaining)))

    # ---------------------------------------------------------------- prompts

    async def submit(self, request: protocol.PromptRequest, client_id: str | None) -> Outcome:
        """Validate and queue a prompt (POST /prompt and the websocket's `prompt` alike)."""
        prompt_id = request.prompt_id or uuid.uuid4().hex
        refusal = self._refusal(prompt_id)
        if refusal is not None:
            return refusal
        extra_data = request.extra_data.model_dump(exclude_none=True) if request.extra_data is not None else {}
        client_id = client_id or extra_data.get("client_id")
        extra_data.pop("client_id", None)
        problem = _pnginfo_problem(extra_data.get("extra_pnginfo"))
        if problem is not None:
            return Outcome(400, protocol.prompt_error_body("invalid_extra_data", problem), prompt_id)
        outputs = request.partial_execution_targets
        if self._cheap_to_validate(request.prompt):
            prepared, issues = self._prepare(request.prompt, request.params, outputs)
        else:
            assert self._validator is not None
            loop = asyncio.get_running_loop()
            prepared, issues = await loop.run_in_executor(
                self._validator, self._prepare, request.prompt, request.params, outputs
            )
            refusal = self._refusal(prompt_id)  # again: the queue may have changed meanwhile
            if refusal is not None:
                return refusal
        if issues:
            return Outcome(400, protocol.invalid_prompt_body(issues, workflow_nodes(request.prompt)), prompt_id)
        number = request.number if request.number is not None else self.queue.next_number(bool(request.front))
        item = QueuedPrompt(
            prompt_id, number, client_id, request.prompt, request.params or {}, extra_data, outputs, prepared=prepared
        )
        try:
            self.queue.put(item)
        except QueueFull as exc:
            return Outcome(503, protocol.prompt_error_body("queue_full", str(exc)), prompt_id)
        except OSError as exc:
            logger.error("could not write prompt %s to the queue journal: %s", prompt_id, exc)
            return Outcome(503, protocol.prompt_error_body("state_unwritable", "the server cannot save the queue"),
                           prompt_id)
        self._send_status()
        return Outcome(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}}, prompt_id)

    def _refusal(self, prompt_id: str) -> Outcome | None:
        if self._closing:
            return Outcome(503, protocol.prompt_error_body("server_shutting_down", SHUTDOWN_REASON), prompt_id)
        if self.queue.knows(prompt_id) or prompt_id in self.history:
            message = f"prompt_id {prompt_id!r} is already in use; omit prompt_id to get a fresh one"
            return Outcome(400, protocol.prompt_error_body("duplicate_prompt_id", message), prompt_id)
        if self.queue.is_full():
            message = f"the queue is full ({self.queue.max_pending} prompts pending); try again later"
            return Outcome(503, protocol.prompt_error_body("queue_full", message), prompt_id)
        return None

    def _cheap_to_validate(self, prompt: dict[str, Any]) -> bool:
        """Whether validating this prompt on the loop thread costs less than handing it to a thread.

        Validation is pure Python at a few microseconds per node, while each thread hand-off is a wake-up
        that, on a busy machine, can wait for a whole scheduler time slice. Large workflows and ones that
        fingerprint input files (reading them) still go to the validation thread.
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
        self, prompt: dict[str, Any], params: dict[str, Any] | None, outputs: list[str] | None = None
    ) -> tuple[PreparedRun | None, list[ValidationIssue]]:
        """The prepared run the worker will execute, or the issues that refuse the prompt."""
        try:
            prepared = self.engine.prepare(prompt, params, outputs)
            return prepared, self.engine.validate(prepared)
        except WorkflowError as exc:
            return None, exc.errors
        except Exception as exc:  # validation itself broke: refuse the prompt, say why
            logger.exception("validating a prompt failed")
            return None, [ValidationIssue(type="validation_failed", message=f"{type(exc).__name__}: {exc}")]

    def interrupt(self, prompt_id: str | None) -> dict[str, Any]:
        """Stop the running prompt (only if it is `prompt_id`, when given): ComfyUI's POST /interrupt.

        With several running (the Ray backend), an interrupt without an id stops every one of them.
        """
        running = self.queue.running
        chosen = [item for item in running if prompt_id is None or item.prompt_id == prompt_id]
        if not chosen:
            if not running:
                reason = "nothing is running"
            elif prompt_id in {item.prompt_id for item in self.queue.pending}:
                reason = "that prompt is pending, not running; delete it from the queue instead"
            else:
                reason = "that prompt is not running"
            return {"prompt_id": prompt_id, "interrupted": False, "reason": reason}
        for item in chosen:
            item.interrupt.set()  # this prompt's own flag: it cannot stop the next one by accident
        if len(chosen) == 1:
            return {"prompt_id": chosen[0].prompt_id, "interrupted": True}
        return {"prompt_id": None, "interrupted": True, "prompt_ids": [item.prompt_id for item in chosen]}

    def change_queue(self, clear: bool, delete: list[str]) -> dict[str, Any]:
        removed = self.queue.clear() if clear else []
        refused: dict[str, str] = {}
        if delete:
            more, refused = self.queue.remove(delete)
            removed += more
            if clear:  # cleared already: not "not in the queue"
                cleared = {item.prompt_id for item in removed}
                refused = {key: why for key, why in refused.items() if key not in cleared}
        for item in removed:
            self.clients.send_to_client(item.client_id, [encode("prompt_deleted", {"prompt_id": item.prompt_id})])
        if removed:
            self._send_status()
        return {**self.queue_snapshot(), "deleted": [item.prompt_id for item in removed], "not_deleted": refused}

    def cancel(self, prompt_ids: list[str]) -> dict[str, Any]:
        """The jobs API's cancel: interrupt the running one, delete pending ones."""
        cancelled = []
        running = {item.prompt_id: item for item in self.queue.running}
        rest = []
        for prompt_id in prompt_ids:
            if prompt_id in running:
                running[prompt_id].interrupt.set()
                cancelled.append(prompt_id)
            else:
                rest.append(prompt_id)
        change = self.change_queue(False, rest) if rest else {"deleted": [], "not_deleted": {}}
        return {"cancelled": cancelled + change["deleted"], "not_cancelled": change["not_deleted"]}

    # ---------------------------------------------------------------- shared views

    def queue_snapshot(self) -> dict[str, Any]:
        running, pending = self.queue.snapshot()
        return {
            "queue_running": [item.comfy_item() for item in running],
            "queue_pending": [item.comfy_item() for item in pending],
        }

    def jobs(self, statuses: set[str]) -> list[dict[str, Any]]:
        """The frontend's job list: running, then pending in order, then finished ones newest first."""
        found: list[dict[str, Any]] = []
        running, pending = self.queue.snapshot()
        if "in_progress" in statuses:
            found.extend(_queued_job(item, "in_progress") for item in running)
        if "pending" in statuses:
            found.extend(_queued_job(item, "pending") for item in pending)
        wanted = {key for key, value in _JOB_STATUS.items() if value in statuses}
        if wanted:
            for prompt_id, brief in reversed(self.history.summaries()):
                if brief.get("status") in wanted:
                    found.append(_finished_job(prompt_id, brief))
        return found

    def job_detail(self, job_id: str) -> dict[str, Any] | None:
        running, pending = self.queue.snapshot()
        for item, status in [*((item, "in_progress") for item in running), *((item, "pending") for item in pending)]:
            if item.prompt_id == job_id:
                job = _queued_job(item, status)
                job["workflow"] = {"prompt": item.prompt, "extra_data": item.public_extra_data()}
                return job
        entry = self.history.get(job_id) if job_id in self.history else None
        if entry is None:
            return None
        summaries = dict(self.history.summaries())
        job = _finished_job(job_id, summaries.get(job_id, {}))
        job.update(
            workflow={"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]},
            outputs=entry.get("outputs") or {},
            execution_status=entry.get("status"),
            update_time=job.get("execution_end_time"),
        )
        return job

    def features(self) -> dict[str, Any]:
        return {**protocol.SERVER_FEATURES, "max_upload_size": self.config.max_upload_bytes}

    def file_directories(self) -> dict[str, Path]:
        return {"output": self.output_dir, "input": self.engine.input_dir, "temp": self.temp_dir}

    def catalogue_bytes(self) -> bytes:
        """nodegraph's own catalogue (`nodegraph nodes --json`) as JSON, encoded once per registry version."""
        registry = self.engine.registry
        cached = self._catalogue
        if cached is None or cached[0] != registry.version:
            body = json.dumps(registry.catalogue(), separators=(",", ":"), ensure_ascii=False, default=str).encode()
            cached = self._catalogue = (registry.version, body)
        return cached[1]

    def input_files(self) -> list[str]:
        """LoadImage's choices: the example images nodegraph ships (`example:NAME`), then the images in the
        input directory, sorted, at most 10 000."""
        from nodegraph.world.examples import EXAMPLES, PREFIX

        return [PREFIX + name for name in EXAMPLES] + self._input_images()

    def _input_images(self) -> list[str]:
        base = self.engine.input_dir
        try:
            names = [
                path.relative_to(base).as_posix()
                for path in base.rglob("*")
                if path.suffix.lower() in _IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in path.relative_to(base).parts)
                and path.is_file()
            ]
        except OSError:
            return []
        return sorted(names)[:10_000]

    def node_info(self, spec: NodeSpec) -> dict[str, Any]:
        return node_info(spec, self.input_files)

    def object_info_bytes(self) -> bytes:
        """ComfyUI's /object_info for every node, cached until the registry or the input directory changes."""
        registry = self.engine.registry
        try:
            stamp = self.engine.input_dir.stat().st_mtime_ns
        except OSError:
            stamp = 0
        key = (registry.version, stamp)
        cached = self._object_info
        if cached is None or cached[0] != key:
            files = self.input_files()
            ordered = sorted((registry[name] for name in registry), key=lambda spec: (spec.category, spec.name))
            info = {spec.name: node_info(spec, lambda: files) for spec in ordered}
            cached = self._object_info = (key, jsonio.dump_bytes(info))
        return cached[1]

    def ui_workflow(self, source: Path) -> dict[str, Any]:
        document = json.loads(source.read_text(encoding="utf-8"))
        return to_ui(document, self.engine.registry, name=source.stem)


def _engine(config: ServerConfig) -> Any:
    """The engine the config describes: a local Engine, or a ClusterEngine over a Ray pool (--backend ray)."""
    if config.cluster.backend != "ray":
        return Engine(config.device, input_dir=config.input_dir, output_dir=config.output_dir)
    return config.cluster.cluster_engine(config.input_dir, config.output_dir, config.device)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    message = f"no such page: {request.path[:200]}" if exc.status == 404 else (exc.text or exc.reason)
    response = error_reply(exc.status, exc.reason.lower().replace(" ", "_"), message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


_JOB_STATUS = {"success": "completed", "error": "failed", "interrupted": "cancelled"}


def _ms(seconds: Any) -> int | None:
    return int(seconds * 1000) if isinstance(seconds, (int, float)) else None


def _queued_job(item: QueuedPrompt, status: str) -> dict[str, Any]:
    return {
        "id": item.prompt_id,
        "status": status,
        "create_time": _ms(item.submitted_at),
        "execution_start_time": None,
        "execution_end_time": None,
        "preview_output": None,
        "outputs_count": None,
        "previewable_outputs_count": None,
        "execution_error": None,
        "workflow_id": None,
        "priority": item.number,
    }


def _finished_job(prompt_id: str, brief: dict[str, Any]) -> dict[str, Any]:
    error = brief.get("error")
    if error is not None:
        error = {
            "node_id": str(error.get("node_id") or ""),
            "node_type": str(error.get("node_type") or ""),
            "exception_message": str(error.get("exception_message") or ""),
            "exception_type": str(error.get("exception_type") or ""),
            "traceback": [],
        }
    return {
        "id": prompt_id,
        "status": _JOB_STATUS.get(brief.get("status") or "", "failed"),
        "create_time": _ms(brief.get("submitted_at")) or 0,
        "execution_start_time": _ms(brief.get("started_at")),
        "execution_end_time": _ms(brief.get("finished_at")),
        "preview_output": brief.get("preview"),
        "outputs_count": brief.get("outputs_count", 0),
        "previewable_outputs_count": brief.get("outputs_count", 0),
        "execution_error": error,
        "workflow_id": None,
        "priority": brief.get("number"),
    }


def _pnginfo_problem(pnginfo: Any) -> str | None:
    """Why a client's extra_pnginfo cannot be written into PNGs (None when it can)."""
    if pnginfo is None:
        return None
    if not isinstance(pnginfo, dict):
        return "extra_data.extra_pnginfo must be a JSON object"
    if len(pnginfo) > MAX_PNGINFO_KEYS:
        return f"extra_data.extra_pnginfo has {len(pnginfo)} keys; at most {MAX_PNGINFO_KEYS}"
    for key in pnginfo:
        if not (1 <= len(key) <= 79 and all(32 <= ord(char) <= 126 for char in key)):
            return f"extra_pnginfo key {key[:40]!r} is not a PNG text keyword (1-79 printable ASCII characters)"
    return None
