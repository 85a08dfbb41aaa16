"""The Ray actor that runs workflows: one Engine, resident for the actor's life (models and cache stay loaded).

It writes into a private output directory and sends back what the run produced: the result, and the bytes of
every file it wrote, which the driver lands in the real output directory with the names a local run would have
given them. Engine events go to the driver through an EventSink actor as they happen, tagged with their run,
in small batches (so a preview-per-step run costs a few remote calls per second, not one per event). The actor is
threaded (max_concurrency 2) so that `interrupt` can reach a run that is in progress.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.errors import InputValueError, Interrupted, NodeExecutionError, WorkflowError

FLUSH_SECONDS = 0.05  # the longest an event waits in the actor before it is sent
PREVIEW_SECONDS = 0.2  # at most five previews a second leave a worker (the rest go as plain progress)
END = "__end__"  # the last item a run puts on the queue: the driver knows then that it has every event


@dataclass
class Job:
    """One run: what to run and whom it is for."""

    prompt_id: str
    workflow: Any  # API-format nodes with the params already applied (the driver validated them)
    params: dict[str, Any] = field(default_factory=dict)  # those param values, for the record (SaveImage's PNGs)
    extra_pnginfo: dict[str, Any] | None = None
    outputs: list[str] | None = None
    attempt: int = 1  # 2 when the pool runs it again after its worker died: its events start over


@dataclass
class Outcome:
    """What a run gave: status is success, node_error, invalid or interrupted; `files` are (path relative to
    the output directory, bytes) in the order they were written."""

    prompt_id: str
    status: str
    worker: str
    outputs: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: dict[str, Any] | None = None  # node_error: node_id, node_type, input, is_input_error, message, traceback
    issues: list[Any] = field(default_factory=list)  # invalid: ValidationIssue records


class EngineWorker:
    """Ray actor body (decorated by the pool): `run(job, queue)` executes a Job, `interrupt(prompt_id)` stops it."""

    def __init__(self, name: str, device: str = "auto", input_dir: str | None = None,
                 threads: int | None = None) -> None:
        import torch

        from nodegraph.engine.api import Engine

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.output_dir = Path(tempfile.mkdtemp(prefix=f"nodegraph-{name}-"))
        self.engine = Engine(device, input_dir=input_dir, output_dir=self.output_dir)
        self._flags: dict[str, threading.Event] = {}
        self._flags_lock = threading.Lock()  # run and interrupt are called on two threads (max_concurrency=2)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "device": str(self.engine.device),
                "node": os.uname().nodename}

    def interrupt(self, prompt_id: str) -> bool:
        # The pool asks only the worker a run was given to, which may not have started it yet: the request is
        # kept for it (a run that then starts stops at its first node) rather than refused and lost.
        with self._flags_lock:
            self._flags.setdefault(prompt_id, threading.Event()).set()
        return True

    def run(self, job: Job, sink: Any) -> Outcome:
        with self._flags_lock:  # one run at a time: requests kept for runs that never came here are dropped
            flag = self._flags.get(job.prompt_id) or threading.Event()
            self._flags = {job.prompt_id: flag}
        sender = _EventSender(sink, job.prompt_id, job.attempt)
        started = time.perf_counter()
        outcome = Outcome(job.prompt_id, "success", self.name)
        try:
            prepared = dataclasses.replace(self.engine.prepare(job.workflow, None, job.outputs), params=job.params)
            result = self.engine.run(prepared, None, sender, job.prompt_id, flag, extra_pnginfo=job.extra_pnginfo)
            outcome.outputs, outcome.executed, outcome.cached = result.outputs, result.executed, result.cached
            outcome.files = [self._take(path) for path in result.files]
        except NodeExecutionError as exc:
            outcome.status = "node_error"
            outcome.error = {"node_id": exc.node_id, "node_type": exc.node_type, "input": exc.input,
                             "is_input_error": exc.is_input_error, "message": str(exc.exception),
                             "exception_type": type(exc.exception).__name__, "traceback": exc.traceback}
        except WorkflowError as exc:
            outcome.status, outcome.issues = "invalid", exc.errors
        except Interrupted:
            outcome.status = "interrupted"
        except Exception as exc:  # a bug: report it as a failure of the run, keep the worker alive
            outcome.status = "node_error"
            outcome.error = {"node_id": None, "node_type": None, "input": None, "is_input_error": False,
                             "message": str(exc), "exception_type": type(exc).__name__,
                             "traceback": traceback.format_exception(exc)}
        finally:
            sender(END, {})
            sender.delivered()
            with self._flags_lock:
                self._flags.pop(job.prompt_id, None)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _take(self, path: Path) -> tuple[str, bytes]:
        """A written file's bytes and name; the local copy goes, since the driver now holds the file."""
        relative = Path(path).resolve().relative_to(self.output_dir.resolve())
        data = Path(path).read_bytes()
        Path(path).unlink(missing_ok=True)
        return relative.as_posix(), data

    def clear_cache(self) -> None:
        self.engine.clear_cache()

    def shutdown(self) -> None:
        shutil.rmtree(self.output_dir, ignore_errors=True)


class EventSink:
    """Ray actor (async) between the workers and the driver: workers `put` batches of (prompt id, kind, data)
    without waiting; the driver `take`s everything waiting in one call, blocking up to `timeout` for the next."""

    def __init__(self) -> None:
        import asyncio

        self._items: list[Any] = []
        self._ready = asyncio.Event()

    def put(self, batch: list[Any]) -> None:
        self._items.extend(batch)
        self._ready.set()

    async def take(self, timeout: float) -> list[Any]:
        import asyncio

        if not self._items:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        items, self._items = self._items, []
        self._ready.clear()
        return items


class _EventSender:
    """The run's on_event: batches (kind, data) pairs to the driver's sink without waiting for them to arrive,
    each tagged with its run, the run's attempt and its number within the attempt (an async actor may take two
    batches out of order: the driver puts them back in order by number, and drops a dead attempt's late ones)."""

    def __init__(self, sink: Any, prompt_id: str, attempt: int = 1) -> None:
        self.sink = sink
        self.prompt_id = prompt_id
        self.attempt = attempt
        self.batch: list[tuple[str, int, str, dict[str, Any]]] = []
        self.last = time.monotonic()
        self.pending: Any = None
        self.sent = 0
        self.last_preview = float("-inf")

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if "preview" in data:  # previews were 99% of a run's traffic: fewer of them, as PNG not pickled PIL
            now = time.monotonic()
            if now - self.last_preview >= PREVIEW_SECONDS:
                self.last_preview = now
                data = {**data, "preview": _png(data["preview"])}
            else:
                data = {key: value for key, value in data.items() if key != "preview"}
        self.batch.append((self.prompt_id, self.attempt, self.sent, kind, data))
        self.sent += 1
        # Progress may come many times a second; everything else (a node starts, the run ends) goes at once.
        if kind != "progress" or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            batch, self.batch = self.batch, []
            self.pending = self.sink.put.remote(batch)
        self.last = time.monotonic()

    def delivered(self) -> None:
        """Wait until the last batch is in the sink (the run's outcome must not overtake its events)."""
        if self.pending is not None:
            import ray

            ray.get(self.pending)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def unpack_preview(data: dict[str, Any]) -> dict[str, Any]:
    """An event as the engine made it: a preview sent as PNG bytes becomes a PIL image again."""
    preview = data.get("preview")
    if isinstance(preview, bytes):
        from PIL import Image

        return {**data, "preview": Image.open(io.BytesIO(preview))}
    return data


def local_errors(outcome: Outcome) -> Exception | None:
    """The exception a local Engine.run would have raised for this outcome (None on success)."""
    if outcome.status == "invalid":
        return WorkflowError(list(outcome.issues))
    if outcome.status == "interrupted":
        return Interrupted(f"run {outcome.prompt_id} was interrupted on worker {outcome.worker}")
    if outcome.status == "node_error":
        error = outcome.error or {}
        if error.get("is_input_error"):
            cause: BaseException = InputValueError(error.get("input"), error.get("message", ""))
        else:
            cause = RemoteNodeError(f"{error.get('exception_type')}: {error.get('message')} "
                                    f"(on worker {outcome.worker})")
        return NodeExecutionError(error.get("node_id") or "?", error.get("node_type") or "?", cause,
                                  list(error.get("traceback", [])), error.get("input"))
    return None


class RemoteNodeError(RuntimeError):
    """A node failed on a Ray worker; the message carries its exception type and text, the traceback its stack."""
