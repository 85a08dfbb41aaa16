"""Running prompts: the worker threads, the relay from engine events to wire frames, history entries.

The Engine runs one workflow at a time and blocks while it does, so runs happen on one daemon
worker thread while the event loop keeps serving sockets. Engine events arrive on that thread; the
relay encodes them there (JSON, preview PNGs), so the loop only copies bytes to sockets, and hands
them over in batches through an Outbox (one loop wake-up per batch, not per event). The run's last
`executing` (node null) is held back until the history entry is stored and the queue updated, so a
client that sees the run end can at once ask for its history (ComfyUI's documented client flow).

With the Ray backend (a ClusterEngine, whose runs happen on a pool of worker processes) a PoolWorker
takes prompts instead: as many run at once as the pool has workers, each on a thread of its own that
waits for its remote run; their events arrive on the pool's event thread and go through the same relay.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.cluster.pool import WorkerDied
from nodegraph.engine import events
from nodegraph.engine.api import Engine
from nodegraph.errors import Interrupted, NodeExecutionError, WorkflowError
from nodegraph.server.clients import Frame, NodeState, Preview
from nodegraph.server.history import HistoryStore
from nodegraph.server.protocol import (
    MAX_REPORTED,
    encode,
    preview_frame,
    preview_with_metadata_frame,
    workflow_nodes,
)
from nodegraph.server.queue import PromptQueue, QueuedPrompt
from nodegraph.threads import ThreadPolicy

logger = logging.getLogger("nodegraph.server")

# Events kept in a history entry's status.messages, as ComfyUI keeps them.
_STATUS_EVENTS = frozenset(
    {
        events.EXECUTION_START,
        events.EXECUTION_CACHED,
        events.EXECUTION_SUCCESS,
        events.EXECUTION_ERROR,
        events.EXECUTION_INTERRUPTED,
    }
)
_TERMINAL_EVENTS = frozenset({events.EXECUTION_SUCCESS, events.EXECUTION_ERROR, events.EXECUTION_INTERRUPTED})


class Outbox:
    """Frames made on the worker thread, delivered on the loop in order, one wake-up per batch.

    `deliver(batches, status_due)` receives [(client_id, frames), ...] in the order they were put
    and whether the queue changed (a status broadcast is due) since the last delivery.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[tuple[str, list[Frame]]], bool], None]
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._batches: list[tuple[str, list[Frame]]] = []
        self._status_due = False
        self._scheduled = False
        self._lock = threading.Lock()

    def put(self, client_id: str, frames: list[Frame], *, status: bool = False) -> None:
        with self._lock:
            if frames:
                self._batches.append((client_id, frames))
            self._status_due = self._status_due or status
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop is closed (shutdown gave up on this run): nowhere to deliver
            pass

    def flush(self) -> None:
        """Deliver what is waiting (on the loop thread)."""
        with self._lock:
            batches, self._batches = self._batches, []
            status_due, self._status_due = self._status_due, False
            self._scheduled = False
        if batches or status_due:
            self._deliver(batches, status_due)


class Worker:
    """The thread that runs prompts: it takes the next one from the queue as soon as the last ends.

    Runs do not go through the event loop one by one, so a busy queue costs no thread wake-ups
    between prompts; the loop only wakes to deliver the events the Outbox has collected.
    `stopped` (an asyncio future) resolves when the thread has ended (the queue was closed).
    """

    def __init__(
        self, queue: PromptQueue, runner: PromptRunner, outbox: Outbox, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.outbox = outbox
        self._loop = loop
        self.stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._main, name="nodegraph-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            while True:
                item = self.queue.take()
                if item is None:
                    return
                _run_one(self.queue, self.runner, self.outbox, item)
        finally:
            _resolve_soon(self._loop, self.stopped)


class PoolWorker:
    """Runs prompts on a ClusterEngine: up to `capacity()` at once (the pool's worker count, read again
    whenever a run ends and every half second, so workers added or removed while serving are followed).

    A prompt is taken from the queue only when a pool worker is free for it, so the queue's pending
    prompts stay deletable and `queue_running` lists only prompts that a worker runs (or is about to).
    Each run gets a thread of its own, which waits for the remote run; `stopped` resolves once the queue
    is closed and every run in progress has ended.
    """

    def __init__(
        self,
        queue: PromptQueue,
        runner: PromptRunner,
        outbox: Outbox,
        loop: asyncio.AbstractEventLoop,
        capacity: Callable[[], int],
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.outbox = outbox
        self.capacity = capacity
        self._loop = loop
        self.stopped: asyncio.Future[None] = loop.create_future()
        self._runs = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._main, name="nodegraph-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def runs(self) -> int:
        """Runs in progress."""
        with self._changed:
            return self._runs

    def _main(self) -> None:
        try:
            while True:
                with self._changed:
                    # The pool may grow meanwhile (add_workers, "auto"): look again every half second.
                    while self._runs >= max(1, self.capacity()) and not self.queue.closed:
                        self._changed.wait(0.5)
                item = self.queue.take()
                if item is None:
                    break
                with self._changed:
                    self._runs += 1
                thread = threading.Thread(target=self._run, args=(item,), name="nodegraph-run", daemon=True)
                thread.start()
            with self._changed:  # the queue is closed: wait for the runs in progress to end
                while self._runs:
                    self._changed.wait()
        finally:
            _resolve_soon(self._loop, self.stopped)

    def _run(self, item: QueuedPrompt) -> None:
        try:
            _run_one(self.queue, self.runner, self.outbox, item)
        finally:
            with self._changed:
                self._runs -= 1
                self._changed.notify_all()


def _run_one(queue: PromptQueue, runner: PromptRunner, outbox: Outbox, item: QueuedPrompt) -> None:
    """Run a prompt taken from the queue: its events to its client, its history entry, then its end."""
    outbox.put(item.client_id, [], status=True)
    try:
        final = runner.run(item, outbox).final
    except Exception:  # PromptRunner.run reports every failure itself; this is a bug
        logger.exception("the worker failed on prompt %s", item.prompt_id)
        final = [_final_frame(item.prompt_id)]
    queue.finish(item)
    # After the history entry and the queue: whoever sees the run end can ask for either.
    outbox.put(item.client_id, final, status=True)


def _resolve_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _final_frame(prompt_id: str) -> Frame:
    return encode(*events.executing(prompt_id, None))


class EventRelay:
    """The `on_event` of one run: engine events -> frames for the submitting client, plus a record.

    Besides relaying the engine's events it keeps ComfyUI's `progress_state` (the state of the node running
    now, sent when a node starts and on each progress step) and turns images into binary frames: previews
    (at most every `preview_every` steps per node, 0: never) in both of ComfyUI's forms, and the full images
    SaveImageWebsocket sends as plain image frames.
    """

    def __init__(self, prompt_id: str, preview_every: int, put: Callable[[list[Frame]], None]) -> None:
        self.prompt_id = prompt_id
        self.preview_every = preview_every
        self._put = put
        self._last_preview: dict[Any, float] = {}
        self._running: str | None = None
        self.messages: list[list[Any]] = []  # status events, for the history entry
        self.outputs: dict[str, Any] = {}  # executed events' outputs (cached ones too)
        self.terminal: str | None = None
        self.final: Frame | None = None
        self.previews_sent = 0
        self.images_sent = 0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == events.PROGRESS:
            self._put(self._progress(data))
            return
        if kind == events.IMAGE:
            self._put(self._image(data))
            return
        if kind == events.EXECUTING:
            node = data.get("node")
            if node is None:
                self.final = encode(kind, data)
                return
            self._running = node
            self._put([encode(kind, data), NodeState(self.prompt_id, node)])
            return
        if kind == events.EXECUTED:
            self.outputs[str(data.get("node"))] = data.get("output")
        elif kind in _STATUS_EVENTS:
            self.messages.append([kind, data])
            if kind in _TERMINAL_EVENTS:
                self.terminal = kind
        self._put([encode(kind, data)])

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Send an event the engine did not emit itself (e.g. an error found before the run started)."""
        self(kind, data)

    def _progress(self, data: dict[str, Any]) -> list[Frame]:
        preview = data.get("preview")
        if preview is not None:
            data = {key: value for key, value in data.items() if key != "preview"}
        node, value, maximum = data.get("node"), data.get("value", 0), data.get("max", 1)
        frames: list[Frame] = [encode(events.PROGRESS, data), NodeState(self.prompt_id, node, value, maximum)]
        if preview is not None and self.preview_every > 0:
            last = self._last_preview.get(node)
            if last is None or value - last >= self.preview_every:
                try:
                    png = _png(preview)
                    frames.append(Preview(preview_frame(png), preview_with_metadata_frame(png, self.prompt_id, node)))
                    self._last_preview[node] = value
                    self.previews_sent += 1
                except Exception:  # a preview is a nicety: never fail the run over one
                    logger.exception("could not encode a preview for prompt %s", self.prompt_id)
        return frames

    def _image(self, data: dict[str, Any]) -> list[Frame]:
        try:
            frame = preview_frame(_png(data["image"], compress_level=4))
        except Exception:
            logger.exception("could not encode an image for prompt %s", self.prompt_id)
            return []
        self.images_sent += 1
        return [frame]


def _png(image: Any, compress_level: int = 1) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)  # previews are short-lived: favour speed
    return buffer.getvalue()


@dataclass
class RunOutcome:
    entry: dict[str, Any]
    final: list[Frame] = field(default_factory=list)


class PromptRunner:
    """Runs one QueuedPrompt on the engine (on the worker thread) and stores its history entry."""

    def __init__(self, engine: Engine, history: HistoryStore, preview_every: int,
                 threads: ThreadPolicy | None = None) -> None:
        self.engine = engine
        self.history = history
        self.preview_every = preview_every
        self.threads = threads

    def run(self, item: QueuedPrompt, outbox: Outbox) -> RunOutcome:
        relay = EventRelay(item.prompt_id, self.preview_every, functools.partial(outbox.put, item.client_id))
        started = time.time()
        files: list[dict[str, str]] = []
        executed: list[str] = []
        cached: list[str] = []
        status = "error"
        pnginfo = item.extra_data.get("extra_pnginfo")
        # threads from the CPUs free now, re-decided on the run's progress events
        on_event = self.threads.for_run(relay) if self.threads is not None else relay
        try:
            if item.prepared is not None:
                result = self.engine.run(
                    item.prepared, None, on_event, item.prompt_id, item.interrupt, extra_pnginfo=pnginfo
                )
            else:
                result = self.engine.run(
                    item.prompt, item.params or None, on_event, item.prompt_id, item.interrupt, outputs=item.outputs,
                    extra_pnginfo=pnginfo,
                )
            status = "success"
            files = [self._describe_file(path) for path in result.files]
            executed, cached = result.executed, result.cached
        except NodeExecutionError as exc:
            logger.info("prompt %s: %s", item.prompt_id, exc)
        except Interrupted:
            status = "interrupted"
        except WorkerDied as exc:  # Ray: the workers running it died (it was requeued once already)
            logger.warning("prompt %s: %s", item.prompt_id, exc)
            self._report_error(relay, item, exc, node_id=None, trace=[])
        except WorkflowError as exc:  # found before the run started (e.g. an input file vanished)
            first = next((issue for issue in exc.errors if issue.node is not None), None)
            errors = [issue.model_dump() for issue in exc.errors[:MAX_REPORTED]]
            self._report_error(relay, item, exc, node_id=first.node if first else None, trace=[], errors=errors)
        except Exception as exc:  # a bug in the engine: report it, keep serving
            logger.exception("prompt %s failed inside the engine", item.prompt_id)
            self._report_error(relay, item, exc, node_id=None, trace=traceback.format_exception(exc))
        if relay.terminal is None:  # the engine stopped without saying how: say it for it
            if status == "interrupted":
                relay.emit(*events.execution_interrupted(item.prompt_id))
            elif status == "error":
                self._report_error(relay, item, RuntimeError("the run ended without a result"), None, [])
        entry = history_entry(
            item,
            status,
            relay.messages,
            relay.outputs,
            files=files,
            started=started,
            executed=executed,
            cached=cached,
            seq=self.history.next_seq(),
            previews_sent=relay.previews_sent,
            images_sent=relay.images_sent,
        )
        self.history.add(item.prompt_id, entry)
        return RunOutcome(entry, [relay.final if relay.final is not None else _final_frame(item.prompt_id)])

    def _report_error(
        self,
        relay: EventRelay,
        item: QueuedPrompt,
        exc: BaseException,
        node_id: str | None,
        trace: list[str],
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        node_type = None
        node = workflow_nodes(item.prompt).get(node_id) if node_id is not None else None
        if isinstance(node, dict) and isinstance(node.get("class_type"), str):
            node_type = node["class_type"]
        # `errors`: the validation issues, in the CLI's `validate` format
        relay.emit(*events.execution_error(item.prompt_id, exc, node_id=node_id, node_type=node_type,
                                           traceback=trace, errors=errors))

    def _describe_file(self, path: Path) -> dict[str, str]:
        base = self.engine.output_dir.resolve()
        try:
            relative = Path(path).resolve().relative_to(base)
        except ValueError:
            return {"filename": Path(path).name, "subfolder": "", "type": "external"}
        subfolder = relative.parent.as_posix()
        return {"filename": relative.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}


def history_entry(
    item: QueuedPrompt,
    status: str,
    messages: list[list[Any]],
    outputs: dict[str, Any],
    *,
    started: float,
    seq: int,
    files: list[dict[str, str]] | None = None,
    **facts: Any,
) -> dict[str, Any]:
    """ComfyUI's history entry for a finished prompt, nodegraph's own facts under "nodegraph"."""
    finished = time.time()
    return {
        "prompt": item.comfy_item(),
        "outputs": outputs,
        # ComfyUI has only success and error; an interrupt is an error whose messages say so.
        "status": {
            "status_str": "success" if status == "success" else "error",
            "completed": status == "success",
            "messages": messages,
        },
        "meta": {
            node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
            for node in outputs
        },
        "nodegraph": {
            "status": status,
            "params": item.params,
            "files": files or [],
            "submitted_at": item.submitted_at,
            "started_at": started,
            "finished_at": finished,
            "seconds": round(finished - started, 6),
            "seq": seq,
            **facts,
        },
    }
