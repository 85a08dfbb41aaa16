"""RunContext: what a node sees of the engine while it runs (device, progress, interrupt, outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegraph.engine import events
from nodegraph.engine.paths import confine
from nodegraph.errors import Interrupted

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import torch


class RunState:
    """Per-run settings shared by every node's RunContext in that run."""

    __slots__ = ("prompt_id", "device", "input_dir", "output_dir", "workflow", "params", "extra_pnginfo", "emit",
                 "_checks")

    def __init__(
        self,
        *,
        prompt_id: str,
        device: torch.device,
        input_dir: Path,
        output_dir: Path,
        workflow: Mapping[str, Any],
        params: Mapping[str, Any],
        emit: Callable[[str, dict[str, Any]], None] | None,
        flags: tuple[Any, ...],
        extra_pnginfo: Mapping[str, Any] | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        self.device = device
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.workflow = workflow
        self.params = params
        self.extra_pnginfo = extra_pnginfo or {}
        self.emit = emit
        # Flags are threading.Event-like objects (is_set) or plain callables returning a bool.
        self._checks = tuple(getattr(flag, "is_set", flag) for flag in flags)

    def interrupted(self) -> bool:
        for check in self._checks:
            if check():
                return True
        return False


class RunContext:
    """Handed to `Node.run` as `ctx`; one per node execution.

    `record(...)` reports JSON-friendly values for the `executed` event and the run result (an output
    node's entry in `result.outputs`); `add_file(path)` registers a file the node wrote under
    `output_dir` and returns its ComfyUI-style descriptor {"filename", "subfolder", "type"}.
    """

    __slots__ = ("_run", "node_id", "node_type", "ui", "files")

    def __init__(self, run: RunState, node_id: str, node_type: str) -> None:
        self._run = run
        self.node_id = node_id
        self.node_type = node_type
        self.ui: dict[str, Any] | None = None
        self.files: list[Path] | None = None

    @property
    def device(self) -> torch.device:
        return self._run.device

    @property
    def prompt_id(self) -> str:
        return self._run.prompt_id

    @property
    def input_dir(self) -> Path:
        return self._run.input_dir

    @property
    def output_dir(self) -> Path:
        return self._run.output_dir

    @property
    def workflow(self) -> Mapping[str, Any]:
        """The API-format workflow being run, with params applied (for metadata such as PNG chunks)."""
        return self._run.workflow

    @property
    def params(self) -> Mapping[str, Any]:
        """The run's param values, by param name, already converted to their inputs' types."""
        return self._run.params

    @property
    def extra_pnginfo(self) -> Mapping[str, Any]:
        """What the client asked to be written into saved PNGs (ComfyUI's UI-format `workflow`, say)."""
        return self._run.extra_pnginfo

    def check_interrupt(self) -> None:
        """Raise Interrupted if an interrupt was requested; long loops call this (or progress)."""
        if self._run.interrupted():
            raise Interrupted(f"interrupted while running node {self.node_id!r} ({self.node_type})")

    def progress(self, value: float, max: float, preview: Any = None) -> None:
        """Report progress (and optionally a preview: PIL image or [B,C,H,W] tensor in [-1, 1]).

        Also a cooperative interrupt point: raises Interrupted if an interrupt was requested.
        """
        self.check_interrupt()
        emit = self._run.emit
        if emit is None:
            return
        if preview is not None:
            from nodegraph.engine.imageio import preview_image

            preview = preview_image(preview)
        emit(*events.progress(self.prompt_id, self.node_id, value, max, preview))

    def send_image(self, image: Any) -> None:
        """Send a full-size image (PIL) to whoever listens (the server relays it to the client as a binary
        frame, as ComfyUI's SaveImageWebsocket does); nothing is written to disk."""
        emit = self._run.emit
        if emit is not None:
            emit(*events.image(self.prompt_id, self.node_id, image))

    def record(self, **items: Any) -> None:
        """Add (or replace) named values in this node's UI output, e.g. record(images=[...])."""
        if self.ui is None:
            self.ui = {}
        self.ui.update(items)

    def add_file(self, path: Path) -> dict[str, str]:
        """Register a file written under output_dir; returns {"filename", "subfolder", "type"}."""
        resolved = Path(path).resolve()
        base = self.output_dir.resolve()
        if not resolved.is_relative_to(base):
            raise ValueError(f"{path} is not inside the output directory {base}")
        if self.files is None:
            self.files = []
        self.files.append(resolved)
        subfolder = resolved.parent.relative_to(base).as_posix()
        return {
            "filename": resolved.name,
            "subfolder": "" if subfolder == "." else subfolder,
            "type": "output",
        }

    def input_path(self, name: str, input_name: str | None = None) -> Path:
        """Resolve `name` inside input_dir, refusing paths that leave it (InputValueError)."""
        return confine(self.input_dir, name, input_name=input_name, must_exist=True)

    def generator(self, seed: int, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh torch.Generator seeded with `seed` (on ctx.device unless told otherwise).

        For images that must match across devices, draw on "cpu" and move the tensor to ctx.device.
        """
        import torch

        generator = torch.Generator(device=torch.device(device) if device is not None else self.device)
        generator.manual_seed(int(seed))
        return generator
