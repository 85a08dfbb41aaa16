"""The Engine: owns a node registry and an output cache, and runs workflows against them.

    engine = Engine(device="auto", output_dir="out")
    result = engine.run("workflows/utility_add.json", params={"a": 2, "b": 3})
    result.outputs["4"]   # {"value": 5.0}

Runs are serialised (one at a time per Engine); `interrupt()` may be called from any thread.
`prepare()` turns a workflow and params into a PreparedRun (engine/prepare.py); `validate()` reports on
it and `run()` executes it, so callers that validate first hand the same object on. Plans are
memoised by the workflow's content; fingerprinted nodes (e.g. LoadImage) are re-fingerprinted on
every run, since a file may change between validation and execution.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegraph.engine.cache import OutputCache
from nodegraph.engine.context import RunContext, RunState
from nodegraph.engine.events import EventCallback
from nodegraph.engine.executor import RunResult, execute
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.plan import Plan, signatures
from nodegraph.engine.prepare import PlanMemo, PreparedRun, WorkflowSource, prepare
from nodegraph.engine.registry import Registry
from nodegraph.errors import ConfigError, InputValueError, ReentrantRunError, ValidationIssue, WorkflowError

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

logger = logging.getLogger("nodegraph")
_RUN_DEVICE: Any = object()  # _state's default: the engine's device, resolved


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto" (or None) means CUDA when available, else CPU; an unavailable device is a ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r} ({exc}); use auto, cpu or cuda") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was requested but CUDA is not available here; use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"{resolved} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return resolved


class Engine:
    """Keeps nodes, models and cached outputs across runs. See the module docstring."""

    def __init__(
        self,
        device: str | torch.device | None = "auto",
        *,
        input_dir: Path | str | None = None,
        output_dir: Path | str | None = None,
        cache_budgets: Mapping[str, int] | None = None,
        max_cache_entries: int = 100_000,
        registry: Registry | None = None,
        plugins: bool = True,
        deterministic: bool = True,
        plan_memo_size: int = 32,
        offload_device: str | None = "cpu",
    ) -> None:
        """`cache_budgets` maps "cpu", "cuda" (each CUDA device) or "cuda:N" to bytes of tensors kept.
        `offload_device`: where models go when their device's budget is full (None: drop them instead);
        `engine.cache.residency.stats` counts the moves (engine/memory.py)."""
        self._requested_device = device
        self._deterministic = deterministic
        # "cpu" cannot fail, so it is resolved (and torch imported) only when a run needs it: validating a
        # workflow costs no torch import. Anything else is checked now, so a bad --device fails at once.
        self._device: torch.device | None = None if device == "cpu" else self._resolve_device()
        self.input_dir = Path(input_dir if input_dir is not None else Path.cwd()).absolute()
        self.output_dir = Path(output_dir if output_dir is not None else "out").absolute()
        self.registry = registry if registry is not None else Registry.discover(plugins=plugins)
        self.cache = OutputCache(cache_budgets, max_cache_entries, offload_device)
        self._plans = PlanMemo(plan_memo_size)
        self._run_lock = threading.Lock()  # one run at a time: the cache is shared
        self._active_flag: threading.Event | None = None
        self._running_thread: int | None = None

    @property
    def device(self) -> torch.device:
        """The device nodes run on."""
        return self._device if self._device is not None else self._resolve_device()

    def _resolve_device(self) -> torch.device:
        self._device = resolve_device(self._requested_device)
        if self._deterministic and self._device.type == "cuda":
            # Autotuned kernels may differ between runs; seeded nodes should give identical images.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        return self._device

    def prepare(
        self,
        workflow: WorkflowSource,
        params: Mapping[str, Any] | None = None,
        outputs: list[str] | None = None,
    ) -> PreparedRun:
        """The workflow with params applied, validated and planned; WorkflowError lists every problem.

        `outputs` restricts the run to these output nodes (default: all of them).
        """
        return prepare(workflow, params, outputs, self.registry, self._plans)

    def validate(
        self,
        workflow: WorkflowSource | PreparedRun,
        params: Mapping[str, Any] | None = None,
        outputs: list[str] | None = None,
    ) -> list[ValidationIssue]:
        """Every problem with the workflow, its params and the files it reads; [] when it can run."""
        try:
            prepared = self._prepared(workflow, params, outputs)
            if prepared.plan.fingerprinted:  # e.g. LoadImage: the file must exist inside input_dir
                # checked without a device: validating must not import torch or touch a GPU
                self._fingerprints(prepared.plan, self._state("validate", prepared, None, (), device=self._device))
        except WorkflowError as exc:
            return exc.errors
        return []

    def run(
        self,
        workflow: WorkflowSource | PreparedRun,
        params: Mapping[str, Any] | None = None,
        on_event: EventCallback | None = None,
        prompt_id: str | None = None,
        interrupt: Any = None,
        outputs: list[str] | None = None,
        extra_pnginfo: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Run a workflow (path, parsed JSON, Workflow, or a PreparedRun) and return its outputs and files.

        `interrupt` is a threading.Event (or a callable returning bool) that stops the run when set.
        `outputs` restricts the run to these output nodes (default: all of them).
        `extra_pnginfo` is written into every saved PNG, one text chunk per key (ComfyUI's client sends its
        UI-format `workflow` this way, so a PNG dropped onto the canvas restores the graph).
        Raises WorkflowError (invalid input), NodeExecutionError (a node failed) or Interrupted.
        """
        if self._running_thread == threading.get_ident():
            raise ReentrantRunError(
                "Engine.run was called from inside a run of the same Engine (an on_event callback?); runs are one "
                "at a time, so it would wait for itself forever: start the next run after this one returns"
            )
        emit = _safe_emitter(on_event) if on_event is not None else None
        prepared = self._prepared(workflow, params, outputs)
        plan = prepared.plan
        with self._run_lock:
            flag = threading.Event()
            flags = (flag,) if interrupt is None else (flag, interrupt)
            state = self._state(prompt_id or uuid.uuid4().hex, prepared, emit, flags, extra_pnginfo)
            self._active_flag = flag
            self._running_thread = threading.get_ident()
            try:
                node_signatures = plan.static_signatures
                if node_signatures is None:
                    # Fingerprints are taken again now: a file may have changed since validation.
                    node_signatures = signatures(plan, self._fingerprints(plan, state))
                return execute(plan, node_signatures, self.cache, state)
            finally:
                self._active_flag = None
                self._running_thread = None

    def interrupt(self) -> bool:
        """Ask the current run to stop at its next interrupt point; False if nothing is running."""
        flag = self._active_flag
        if flag is None:
            return False
        flag.set()
        return True

    def clear_cache(self) -> None:
        """Forget every cached output and memoised plan (the next run is cold)."""
        with self._run_lock:
            self.cache.clear()
            self._plans.clear()

    def catalogue(self) -> dict[str, dict[str, Any]]:
        return self.registry.catalogue()

    def _state(self, prompt_id: str, prepared: PreparedRun, emit: EventCallback | None,
               flags: tuple[Any, ...], extra_pnginfo: Mapping[str, Any] | None = None,
               device: Any = _RUN_DEVICE) -> RunState:
        return RunState(
            prompt_id=prompt_id,
            device=self.device if device is _RUN_DEVICE else device,
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            workflow=prepared.nodes,
            params=prepared.params,
            emit=emit,
            flags=flags,
            extra_pnginfo=extra_pnginfo,
        )

    def _prepared(
        self, workflow: WorkflowSource | PreparedRun, params: Mapping[str, Any] | None, outputs: list[str] | None
    ) -> PreparedRun:
        if not isinstance(workflow, PreparedRun):
            return self.prepare(workflow, params, outputs)
        if params or outputs is not None:
            raise TypeError("a PreparedRun already has its params and outputs; prepare again to change them")
        return workflow

    def _fingerprints(self, plan: Plan, state: RunState) -> dict[str, str]:
        fingerprints: dict[str, str] = {}
        issues: list[ValidationIssue] = []
        for node_id in plan.fingerprinted:
            node = plan.nodes[node_id]
            ctx = RunContext(state, node_id, node.spec.name)
            try:
                value = node.spec.cls.fingerprint(ctx, **node.constants)  # type: ignore[attr-defined]
                # None: what the node reads cannot be known before the run (a file name arriving over a
                # link), so its outputs, and what depends on them, are never served from the cache.
                fingerprints[node_id] = uuid.uuid4().hex if value is None else str(value)
            except InputValueError as exc:
                issues.append(ValidationIssue(node=node_id, input=exc.input, type=exc.code, message=exc.message))
            except Exception as exc:
                issues.append(
                    ValidationIssue(
                        node=node_id,
                        type="fingerprint_failed",
                        message=f"{node.spec.name} could not check its inputs: {type(exc).__name__}: {exc}",
                    )
                )
        if issues:
            raise WorkflowError(issues)
        return fingerprints


def run(
    workflow: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    on_event: EventCallback | None = None,
    *,
    prompt_id: str | None = None,
    interrupt: Any = None,
    **engine_options: Any,
) -> RunResult:
    """One-shot form: build an Engine with `engine_options` and run the workflow once."""
    return Engine(**engine_options).run(workflow, params, on_event, prompt_id=prompt_id, interrupt=interrupt)


def _safe_emitter(callback: EventCallback) -> EventCallback:
    # A listener's bug (or a client gone away) must not corrupt a run or the cache.
    def emit(kind: str, data: dict[str, Any]) -> None:
        try:
            callback(kind, data)
        except Exception:
            logger.exception("on_event callback failed while handling %r", kind)

    return emit
