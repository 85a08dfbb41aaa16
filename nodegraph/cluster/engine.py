"""ClusterEngine: the Engine's interface (prepare, validate, run, interrupt) with runs executed by a WorkerPool.

Workflows are prepared and validated here, on the driver, exactly as a local Engine does (so errors and exit
codes are the same); a valid run goes to a worker as its API-format nodes with the params already applied.
What the run wrote comes back as bytes and lands in this engine's output directory under the names a local
run would have given it (PREFIX_00001_.png, ...), and the result's file records are rewritten to match, so a
batch on the cluster writes the same files as a local batch. The `executed` events that name such files are
held back until the files have landed and go out with the landed names (a client that fetches what an event
names, as ComfyUI's frontend does at once, finds it).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodegraph.cluster.pool import ModelKey, WorkerPool
from nodegraph.cluster.worker import Job, Outcome, local_errors
from nodegraph.engine.events import EventCallback
from nodegraph.engine.executor import RunResult
from nodegraph.engine.paths import next_number, write_new
from nodegraph.engine.prepare import PlanMemo, PreparedRun, WorkflowSource, prepare
from nodegraph.engine.registry import Registry
from nodegraph.errors import ValidationIssue, WorkflowError

_NUMBERED = re.compile(r"(?P<prefix>.+)_(?P<number>\d{5,})_\.png")


class ClusterEngine:
    """See the module docstring. `pool_options` go to WorkerPool (workers, address, gpus_per_worker, ...)."""

    def __init__(self, *, input_dir: Path | str | None = None, output_dir: Path | str | None = None,
                 registry: Registry | None = None, pool: WorkerPool | None = None, **pool_options: Any) -> None:
        self.input_dir = Path(input_dir if input_dir is not None else Path.cwd()).absolute()
        self.output_dir = Path(output_dir if output_dir is not None else "out").absolute()
        self.registry = registry if registry is not None else Registry.discover()
        self.pool = pool if pool is not None else WorkerPool(input_dir=str(self.input_dir), **pool_options)
        self._plans = PlanMemo(32)
        self._land_lock = threading.Lock()  # numbering looks at the folder: one run lands at a time
        self._checker: Any = None  # a local Engine that validates on the driver (made on first use)
        self.device = "cluster"

    def prepare(self, workflow: WorkflowSource, params: Mapping[str, Any] | None = None,
                outputs: list[str] | None = None) -> PreparedRun:
        return prepare(workflow, params, outputs, self.registry, self._plans)

    def validate(self, workflow: WorkflowSource | PreparedRun, params: Mapping[str, Any] | None = None,
                 outputs: list[str] | None = None) -> list[ValidationIssue]:
        """Checked on the driver, as a local Engine checks (input files must be where the workers read them)."""
        from nodegraph.engine.api import Engine

        if self._checker is None:  # it holds no models: validating loads nothing and runs nothing
            self._checker = Engine("cpu", input_dir=self.input_dir, output_dir=self.output_dir,
                                   registry=self.registry)
        return self._checker.validate(workflow, params, outputs)

    def run(self, workflow: WorkflowSource | PreparedRun, params: Mapping[str, Any] | None = None,
            on_event: EventCallback | None = None, prompt_id: str | None = None, interrupt: Any = None,
            outputs: list[str] | None = None, extra_pnginfo: Mapping[str, Any] | None = None) -> RunResult:
        """As Engine.run (same events, results and exceptions); the run happens on a worker of the pool."""
        prepared = workflow if isinstance(workflow, PreparedRun) else self.prepare(workflow, params, outputs)
        events = _FileEvents(on_event) if on_event is not None else None
        try:
            return self.finish(prepared, self.submit(prepared, events, prompt_id, interrupt, extra_pnginfo), events)
        except BaseException:
            if events is not None:  # the run was lost (or its files could not land): send what it had said
                events.release({})
            raise

    def submit(self, prepared: PreparedRun, on_event: EventCallback | None = None, prompt_id: str | None = None,
               interrupt: Any = None, extra_pnginfo: Mapping[str, Any] | None = None) -> Outcome:
        """Run a prepared workflow on the pool (blocking) without landing its files: a batch runs many at once
        and lands them in its own order with `finish`, so file numbers do not depend on which ends first."""
        issues = self.validate(prepared)
        if issues:
            raise WorkflowError(issues)
        prompt_id = prompt_id or uuid.uuid4().hex
        job = Job(prompt_id, prepared.nodes, dict(prepared.params), dict(extra_pnginfo) if extra_pnginfo else None,
                  list(prepared.plan.outputs))
        watcher = _InterruptWatcher(self.pool, prompt_id, interrupt)
        try:
            return self.pool.run(job, on_event, model_keys(prepared))
        finally:
            watcher.stop()

    def finish(self, prepared: PreparedRun, outcome: Outcome, events: _FileEvents | None = None) -> RunResult:
        """The RunResult of a finished outcome, its files landed; or the exception a local run would raise.
        `events`: the run's held-back events, sent now with the landed file names."""
        error = local_errors(outcome)
        if error is not None:
            if events is not None:
                events.release({})
            raise error
        files, outputs, renamed = self._land(outcome)
        if events is not None:
            events.release(renamed)
        return RunResult(prompt_id=outcome.prompt_id, outputs=outputs, files=files, executed=outcome.executed,
                         cached=outcome.cached, params=dict(prepared.params), seconds=outcome.seconds)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop one run (by id), or every run in progress."""
        if prompt_id is not None:
            return self.pool.interrupt(prompt_id)
        running = [w["busy"] for w in self.pool.stats()["workers"] if w["busy"]]
        return any([self.pool.interrupt(pid) for pid in running])

    def clear_cache(self) -> None:
        """Every worker forgets its cached outputs and models (each after its run in progress), as Engine does."""
        self._plans.clear()
        self.pool.clear_caches()

    def close(self) -> None:
        """Stop the pool's workers (the Ray cluster itself stays up)."""
        self.pool.shutdown()

    def catalogue(self) -> dict[str, dict[str, Any]]:
        return self.registry.catalogue()

    def _land(self, outcome: Outcome) -> tuple[list[Path], dict[str, Any], dict[tuple[str, str], str]]:
        """Write the run's files into the output directory, numbered as a local run would number them."""
        renamed: dict[tuple[str, str], str] = {}
        written: list[Path] = []
        with self._land_lock:
            for relative, data in outcome.files:
                path = Path(relative)
                directory = self.output_dir / path.parent
                directory.mkdir(parents=True, exist_ok=True)
                match = _NUMBERED.fullmatch(path.name)
                while True:
                    if match:
                        number = next_number(directory, match["prefix"])
                        target = directory / f"{match['prefix']}_{number:05}_.png"
                    else:
                        target = directory / path.name
                    try:
                        write_new(target, lambda handle, data=data: handle.write(data))
                        break
                    except FileExistsError:
                        if not match:
                            raise
                renamed[(path.parent.as_posix(), path.name)] = target.name
                written.append(target)
        return written, _rename_records(outcome.outputs, renamed), renamed


def model_keys(prepared: PreparedRun) -> frozenset[ModelKey]:
    """The models a run loads: its loader nodes' class and inputs (what placement by affinity matches)."""
    keys = set()
    for node_id in prepared.plan.order:
        node = prepared.plan.nodes[node_id]
        if node.spec.category == "loaders":
            keys.add((node.spec.name, repr(sorted(node.constants.items()))))
    return frozenset(keys)


def _names_output_file(value: Any) -> bool:
    """Whether an `executed` event's output holds a ComfyUI record of a file in the output directory."""
    if isinstance(value, dict):
        if value.get("type") == "output" and "filename" in value:
            return True
        return any(_names_output_file(v) for v in value.values())
    if isinstance(value, list):
        return any(_names_output_file(v) for v in value)
    return False


class _FileEvents:
    """A run's event callback that holds back events from the first `executed` naming an output file until the
    run's files have landed (`release`), then sends them on with the landed names: a worker numbers files in its
    own folder, so the names it reports are not yet the driver's. Events before that point pass straight on.

    Called on the pool's event thread; `release` is called after the pool has delivered the run's last event.
    """

    def __init__(self, callback: EventCallback) -> None:
        self._callback = callback
        self._held: list[tuple[str, dict[str, Any]]] | None = None
        self._lock = threading.Lock()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            if self._held is None and kind == "executed" and _names_output_file(data.get("output")):
                self._held = []
            if self._held is not None:
                self._held.append((kind, data))
                return
        self._callback(kind, data)

    def release(self, renamed: dict[tuple[str, str], str]) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for kind, data in held:
            if kind == "executed" and renamed:
                data = {**data, "output": _rename_records(data.get("output"), renamed)}
            self._callback(kind, data)


def _rename_records(outputs: Any, renamed: dict[tuple[str, str], str]) -> Any:
    """Outputs with ComfyUI file records ({"filename", "subfolder", "type"}) pointing at the landed names."""
    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("type") == "output" and "filename" in value:
                key = (value.get("subfolder") or ".", value["filename"])
                return {**value, "filename": renamed.get(key, value["filename"])}
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(outputs)


class _InterruptWatcher:
    """Turns the caller's interrupt flag (an Event or a callable) into an interrupt of the remote run."""

    def __init__(self, pool: WorkerPool, prompt_id: str, flag: Any) -> None:
        self._done = threading.Event()
        self._thread = None
        if flag is not None:
            check = getattr(flag, "is_set", flag)

            def watch() -> None:
                while not self._done.wait(0.05):
                    # Until a worker has the run (it may be waiting for one, or just starting) nobody can take
                    # the interrupt: keep asking until one does.
                    if check() and pool.interrupt(prompt_id):
                        return

            self._thread = threading.Thread(target=watch, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._done.set()
