"""A pool of EngineWorker actors on a Ray cluster: placement by model affinity, requeue on a dead worker,
interrupts routed to the right worker, workers added and removed while it runs.

    pool = WorkerPool(workers=2)                       # starts (or joins, with address=) a Ray cluster
    outcome = pool.run(Job("p1", workflow, params), on_event=print, models={("DecoderLoader", "")})
    pool.stats()                                       # placements, affinity hits, per-worker state
    pool.shutdown()

`run` blocks its calling thread until the run is over (the server runs one thread per worker; a batch
submits from a thread pool), waits for an idle worker, and prefers the idle worker that already holds the
run's models (their loader nodes' class and inputs), then the one that has run least. A worker that dies
mid-run is replaced and the run goes once more to another worker; a second death is a failed run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nodegraph.cluster.worker import END, EngineWorker, EventSink, Job, Outcome, unpack_preview
from nodegraph.errors import NodegraphError

logger = logging.getLogger("nodegraph.cluster")

EventCallback = Callable[[str, dict[str, Any]], None]
ModelKey = tuple[str, str]  # (loader class, its inputs as text)


class _Listener:
    """A run's callback, with the events that arrived ahead of their turn (numbered by the worker)."""

    __slots__ = ("callback", "ended", "attempt", "next", "early")

    def __init__(self, callback: EventCallback | None) -> None:
        self.callback = callback
        self.ended = threading.Event()
        self.attempt = 1
        self.next = 0
        self.early: dict[int, tuple[str, dict[str, Any]]] = {}

    def arrive(self, attempt: int, number: int, kind: str, data: dict[str, Any]) -> None:
        if attempt < self.attempt:  # sent by a worker that died before the run started over elsewhere
            return
        if attempt > self.attempt:  # the run started over on another worker: it numbers from 0 again
            self.attempt, self.next, self.early = attempt, 0, {}
        self.early[number] = (kind, data)
        while self.next in self.early:
            kind, data = self.early.pop(self.next)
            self.next += 1
            if kind == END:
                self.ended.set()
            elif self.callback is not None:
                try:
                    self.callback(kind, unpack_preview(data))
                except Exception:
                    logger.exception("an event listener failed on %s", kind)


class WorkerDied(NodegraphError, RuntimeError):
    """The worker running a job died (and the one it was requeued on, too)."""


@dataclass
class WorkerState:
    name: str
    handle: Any
    models: set[ModelKey] = field(default_factory=set)
    busy: str | None = None  # the prompt id it runs
    runs: int = 0
    alive: bool = True


class WorkerPool:
    def __init__(
        self,
        workers: int | str = 2,
        *,
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        device: str = "auto",
        input_dir: str | None = None,
        threads_per_worker: int | None = 1,
        monitor_seconds: float = 2.0,
        env: dict[str, str] | None = None,
    ) -> None:
        """`workers` is a count or "auto" (one per GPU in the cluster, else one per CPU); `env` is set in the
        workers' environment (e.g. NODEGRAPH_MODELS, where the model files are on every machine)."""
        import ray

        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        self._actor = ray.remote(max_concurrency=2)(EngineWorker)
        self._options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus_per_worker}
        if env:
            self._options["runtime_env"] = {"env_vars": dict(env)}
        self._args = {"device": device if not gpus_per_worker else "cuda", "input_dir": input_dir,
                      "threads": threads_per_worker}
        self._auto = workers == "auto"
        self.target = self._auto_count() if self._auto else int(workers)
        self._sink = ray.remote(num_cpus=0)(EventSink).remote()
        self._listeners: dict[str, _Listener] = {}
        self._workers: dict[str, WorkerState] = {}
        self._names = (f"worker-{i}" for i in itertools.count(1))
        self._lock = threading.Condition()
        self._closed = False
        self.placements = 0
        self.affinity_hits = 0
        self.requeued = 0
        # runs an interrupt was asked for: a run whose worker dies after (or while) it is asked is not run again
        self._stop_asked: set[str] = set()
        self._fill()
        self._threads = [threading.Thread(target=self._drain_events, name="nodegraph-events", daemon=True),
                         threading.Thread(target=self._monitor, args=(monitor_seconds,), name="nodegraph-monitor",
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ running

    def run(self, job: Job, on_event: EventCallback | None = None, models: set[ModelKey] | frozenset = frozenset()
            ) -> Outcome:
        """Run a job on the best idle worker, blocking until it is over; WorkerDied after a second death."""
        self._listeners[job.prompt_id] = _Listener(on_event)
        died: list[str] = []
        try:
            for attempt in (1, 2):
                worker = self._acquire(job.prompt_id, models)
                if attempt == 2 and self._was_stopped(job.prompt_id):  # asked while it was between workers
                    self._release(worker, set())
                    return Outcome(job.prompt_id, "interrupted", died[-1])
                try:
                    outcome = self._ray.get(worker.handle.run.remote(replace(job, attempt=attempt), self._sink))
                except self._ray.exceptions.RayActorError as exc:
                    self._lost(worker, exc)
                    died.append(worker.name)
                    if self._was_stopped(job.prompt_id):  # the user wanted it stopped: a rerun would undo that
                        logger.warning("worker %s died running %s after an interrupt; not running it again",
                                       worker.name, job.prompt_id)
                        return Outcome(job.prompt_id, "interrupted", worker.name)
                    if attempt == 2:
                        # Short and plain: this is what a server's history and its client show.
                        raise WorkerDied(f"the Ray workers running this prompt died ({' then '.join(died)}: "
                                         f"{type(exc).__name__}); it was run twice and not finished") from None
                    self.requeued += 1
                    logger.warning("worker %s died running %s; running it again elsewhere", worker.name,
                                   job.prompt_id)
                    continue
                self._release(worker, models if outcome.status == "success" else set())
                # Every event of the run reaches its callback before the caller hears the run is over.
                self._listeners[job.prompt_id].ended.wait(30)
                return outcome
            raise AssertionError("unreachable")
        finally:
            self._listeners.pop(job.prompt_id, None)
            with self._lock:
                self._stop_asked.discard(job.prompt_id)

    def _was_stopped(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self._stop_asked

    def interrupt(self, prompt_id: str) -> bool:
        """Stop a run on whichever worker has it; False if no worker is running it. A run whose worker dies before
        it stops is not started again elsewhere (it ends as interrupted)."""
        with self._lock:
            if prompt_id in self._listeners:
                self._stop_asked.add(prompt_id)
            worker = next((w for w in self._workers.values() if w.busy == prompt_id), None)
        if worker is None:
            return False
        try:
            return bool(self._ray.get(worker.handle.interrupt.remote(prompt_id), timeout=30))
        except Exception:  # the worker is gone: its run is lost anyway, and `run` reports it
            return False

    # ------------------------------------------------------------------ membership

    def add_workers(self, count: int = 1) -> list[str]:
        """Start more workers (a machine joined); the target grows with them."""
        with self._lock:
            self.target += count
            return self._fill()

    def remove_worker(self, name: str) -> bool:
        """Stop a worker once it is idle (its run, if any, finishes first); the target shrinks with it."""
        with self._lock:
            worker = self._workers.get(name)
            if worker is None:
                return False
            self.target -= 1
            while worker.busy is not None and worker.alive:
                self._lock.wait(1.0)
            self._workers.pop(name, None)
            self._lock.notify_all()
        self._ray.kill(worker.handle)
        return True

    def stats(self) -> dict[str, Any]:
        """What /system_stats shows: placements, affinity hit rate, requeues, and each worker's state."""
        with self._lock:
            return {
                "backend": "ray",
                "target_workers": self.target,
                "placements": self.placements,
                "affinity_hits": self.affinity_hits,
                "affinity_hit_rate": round(self.affinity_hits / self.placements, 4) if self.placements else None,
                "requeued": self.requeued,
                "workers": [{"name": w.name, "busy": w.busy, "runs": w.runs, "models": len(w.models)}
                            for w in self._workers.values()],
            }

    def clear_caches(self) -> None:
        """Every worker forgets its cached outputs and models (each once its run in progress ends)."""
        with self._lock:
            workers = [w for w in self._workers.values() if w.alive]
        calls = [w.handle.clear_cache.remote() for w in workers]
        for worker, call in zip(workers, calls, strict=True):
            try:
                self._ray.get(call)
            except self._ray.exceptions.RayActorError:
                continue  # gone: it holds nothing any more
            with self._lock:
                worker.models.clear()  # placement must not count on models it no longer holds

    def worker_info(self) -> list[dict[str, Any]]:
        """What each worker that answers says about itself; one found dead is replaced (as the monitor would)."""
        with self._lock:
            workers = list(self._workers.values())
        calls = [w.handle.info.remote() for w in workers]
        infos = []
        for worker, call in zip(workers, calls, strict=True):
            try:
                infos.append(self._ray.get(call))
            except self._ray.exceptions.RayActorError as exc:
                self._lost(worker, exc)
        return infos

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
            self._lock.notify_all()
        for worker in workers:
            self._ray.kill(worker.handle)
        self._ray.kill(self._sink)  # the event thread's pending take fails, sees the pool closed and ends

    # ------------------------------------------------------------------ internals

    def _fill(self) -> list[str]:
        """Start workers up to the target; the one place that decides how many, under the lock, so a death seen by
        a run, the monitor and worker_info at once is replaced once (creating an actor only queues it)."""
        started = []
        with self._lock:
            while not self._closed and len(self._workers) < self.target:
                name = next(self._names)
                handle = self._actor.options(name=None, **self._options).remote(name, **self._args)
                self._workers[name] = WorkerState(name, handle)
                started.append(name)
            self._lock.notify_all()
        return started

    def _acquire(self, prompt_id: str, models: set[ModelKey] | frozenset) -> WorkerState:
        with self._lock:
            while True:
                if self._closed:
                    raise WorkerDied("the worker pool was shut down")
                idle = [w for w in self._workers.values() if w.busy is None and w.alive]
                if idle:
                    # Models first (loading them costs seconds), then the least used worker.
                    best = max(idle, key=lambda w: (len(w.models & models), -w.runs))
                    best.busy = prompt_id
                    self.placements += 1
                    if models and models <= best.models:
                        self.affinity_hits += 1
                    return best
                self._lock.wait(1.0)

    def _release(self, worker: WorkerState, models: set[ModelKey] | frozenset) -> None:
        with self._lock:
            worker.busy = None
            worker.runs += 1
            worker.models |= set(models)
            self._lock.notify_all()

    def _lost(self, worker: WorkerState, reason: Any) -> None:
        with self._lock:
            if not worker.alive:
                return
            worker.alive = False
            worker.busy = None
            self._workers.pop(worker.name, None)
            self._lock.notify_all()
        started = self._fill()
        logger.warning("worker %s is gone (%s)%s", worker.name, reason, f"; started {started[0]}" if started else "")

    def _drain_events(self) -> None:
        """Deliver the workers' events to the callbacks of their runs, in the order each worker sent them."""
        while not self._closed:
            try:
                batch = self._ray.get(self._sink.take.remote(0.5))
            except Exception:  # the sink went away at shutdown
                if self._closed:
                    return
                time.sleep(0.1)
                continue
            for prompt_id, attempt, number, kind, data in batch:
                listener = self._listeners.get(prompt_id)
                if listener is not None:
                    listener.arrive(attempt, number, kind, data)

    def _monitor(self, every: float) -> None:
        """Replace idle workers that died (a machine went away) and, with workers="auto", grow with the cluster."""
        while not self._closed:
            time.sleep(every)
            try:
                self._check_workers()
            except Exception:  # one bad look (the cluster briefly unreachable) must not end the watching
                logger.exception("the worker monitor's check failed; trying again in %.1f s", every)

    def _check_workers(self) -> None:
        with self._lock:
            idle = [w for w in self._workers.values() if w.busy is None and w.alive]
        for worker in idle:
            try:
                self._ray.get(worker.handle.info.remote(), timeout=10)
            except self._ray.exceptions.GetTimeoutError:
                continue  # slow (starting up, or busy with a message): not dead
            except Exception as exc:
                self._lost(worker, exc)
        if self._auto:
            wanted = self._auto_count()
            with self._lock:
                grow = wanted - self.target
            if grow > 0:
                self.add_workers(grow)
        self._fill()

    def _auto_count(self) -> int:
        resources = self._ray.cluster_resources()
        gpus = int(resources.get("GPU", 0) / self._options["num_gpus"]) if self._options["num_gpus"] else 0
        return max(1, gpus or int(resources.get("CPU", 1)) - 1)  # a CPU for the queue and the driver
