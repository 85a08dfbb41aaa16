"""Terminal progress bars for `nodegraph run`, driven by engine events (only used on a TTY)."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm import tqdm

from nodegraph.engine import events


class ProgressBars:
    """One bar counting executed nodes, and one for the steps of the node currently running."""

    def __init__(self, stream: TextIO, label: str = "") -> None:
        self._stream = stream
        self._label = label
        self._nodes: tqdm | None = None
        self._steps: tqdm | None = None
        self._steps_node: str | None = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == events.EXECUTION_START:
            self._nodes = tqdm(desc=f"{self._label}nodes", unit="node", file=self._stream, leave=False)
        elif kind == events.EXECUTING:
            self._close_steps()
            if data["node"] is None:
                self.close()
            elif self._nodes is not None:
                self._nodes.set_postfix_str(f"node {data['node']}", refresh=False)
                self._nodes.update(1)
        elif kind == events.PROGRESS:
            node = data["node"]
            if self._steps is None or self._steps_node != node:
                self._close_steps()
                total = data["max"] if data["max"] else None
                self._steps = tqdm(desc=f"node {node}", total=total, file=self._stream, leave=False)
                self._steps_node = node
            self._steps.n = data["value"]
            self._steps.refresh()

    def _close_steps(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None
            self._steps_node = None

    def close(self) -> None:
        self._close_steps()
        if self._nodes is not None:
            self._nodes.close()
            self._nodes = None
