"""ClusterEngine: the Engine's interface (prepare, validate, run, interrupt) with runs executed by a WorkerPool.

Workflows are prepared and validated here, on the driver, exactly as a local Engine does (so errors and exit
codes are the same); a valid run goes to a worker as its API-format nodes with the params already applied.
What the run wrote comes back as bytes and lands in this engine's output directory under the names a local
run would have given it (PREFIX_00001_.png, ...), and the result's file records are rewritten to match, so a
batch on the cluster writes the same files as a local batch.
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
        self.device = "cluster"

    def prepare(self, workflow: WorkflowSource, params: Mapping[str, Any] | None = None,
                outputs: list[str] | None = None) -> PreparedRun:
        return prepare(workflow, params, outputs, self.registry, self._plans)

    def validate(self, workflow: WorkflowSource | PreparedRun, params: Mapping[str, Any] | None = None,
                 outputs: list[str] | None = None) -> list[ValidationIssue]:
        """Checked on the driver, as a local Engine checks (input files must be where the workers read them)."""
        from nodegraph.engine.api import Engine

        checker = Engine("cpu", input_dir=self.input_dir, output_dir=self.output_dir, registry=self.registry)
        return checker.validate(workflow, params, outputs)

    def run(self, workflow: WorkflowSource | PreparedRun, params: Mapping[str, Any] | None = None,
            on_event: EventCallback | None = None, prompt_id: str | None = None, interrupt: Any = None,
            outputs: list[str] | None = None, extra_pnginfo: Mapping[str, Any] | None = None) -> RunResult:
        """As Engine.run (same events, results and exceptions); the run happens on a worker of the pool."""
        prepared = workflow if isinstance(workflow, PreparedRun) else self.prepare(workflow, params, outputs)
        return self.finish(prepared, self.submit(prepared, on_event, prompt_id, interrupt, extra_pnginfo))

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

    def finish(self, prepared: PreparedRun, outcome: Outcome) -> RunResult:
        """The RunResult of a finished outcome, its files landed; or the exception a local run would raise."""
        error = local_errors(outcome)
        if error is not None:
            raise error
        files, outputs = self._land(outcome)
        return RunResult(prompt_id=outcome.prompt_id, outputs=outputs, files=files, executed=outcome.executed,
                         cached=outcome.cached, params=dict(prepared.params), seconds=outcome.seconds)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop one run (by id), or every run in progress."""
        if prompt_id is not None:
            return self.pool.interrupt(prompt_id)
        running = [w["busy"] for w in self.pool.stats()["workers"] if w["busy"]]
        return any([self.pool.interrupt(pid) for pid in running])

    def catalogue(self) -> dict[str, dict[str, Any]]:
        return self.registry.catalogue()

    def _land(self, outcome: Outcome) -> tuple[list[Path], dict[str, Any]]:
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
        return written, _rename_records(outcome.outputs, renamed)


def model_keys(prepared: PreparedRun) -> frozenset[ModelKey]:
    """The models a run loads: its loader nodes' class and inputs (what placement by affinity matches)."""
    keys = set()
    for node_id in prepared.plan.order:
        node = prepared.plan.nodes[node_id]
        if node.spec.category == "loaders":
            keys.add((node.spec.name, repr(sorted(node.constants.items()))))
    return frozenset(keys)


def _rename_records(outputs: dict[str, Any], renamed: dict[tuple[str, str], str]) -> dict[str, Any]:
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
                    if check():
                        pool.interrupt(prompt_id)
                        return

            self._thread = threading.Thread(target=watch, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._done.set()
