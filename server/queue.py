"""The prompt queue: a FIFO of pending prompts and the one running, with persistence across restarts."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("nodegraph.server")

QUEUE_FILE_VERSION = 1


class QueueFull(Exception):
    pass


@dataclass
class QueuedPrompt:
    """A prompt accepted by the server: what to run, for whom, and its place in line."""

    prompt_id: str
    number: int
    client_id: str
    prompt: dict[str, Any]  # the workflow as submitted (bare or wrapped)
    params: dict[str, Any]
    submitted_at: float = field(default_factory=time.time)
    interrupt: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    # The engine's PreparedRun from submission (validated then), handed to the worker so it is not prepared
    # again; a prompt reloaded from disk has none and is prepared when it runs.
    prepared: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "number": self.number,
            "client_id": self.client_id,
            "submitted_at": self.submitted_at,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "prompt": self.prompt, "params": self.params}

    @classmethod
    def from_json(cls, data: Any) -> QueuedPrompt:
        if not isinstance(data, dict):
            raise ValueError("a queued prompt must be an object")
        item = cls(
            prompt_id=data["prompt_id"],
            number=data["number"],
            client_id=data["client_id"],
            prompt=data["prompt"],
            params=data.get("params") or {},
            submitted_at=data.get("submitted_at", time.time()),
        )
        if not (
            isinstance(item.prompt_id, str)
            and isinstance(item.number, int)
            and isinstance(item.client_id, str)
            and isinstance(item.prompt, dict)
            and isinstance(item.params, dict)
        ):
            raise ValueError("a queued prompt has fields of the wrong type")
        return item


class PromptQueue:
    """FIFO of pending prompts plus the running one, shared by the event loop and the worker thread.

    The loop adds and removes pending prompts; the worker thread `take`s the next one as soon as
    it has finished the last, without a round trip through the loop. Everything is under one lock.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[str, QueuedPrompt] = OrderedDict()
        self._running: QueuedPrompt | None = None
        self._closed = False
        self._next_number = 0
        self._condition = threading.Condition()

    @property
    def running(self) -> QueuedPrompt | None:
        with self._condition:
            return self._running

    @property
    def pending(self) -> list[QueuedPrompt]:
        with self._condition:
            return list(self._pending.values())

    @property
    def remaining(self) -> int:
        """Pending plus running: ComfyUI's exec_info.queue_remaining."""
        with self._condition:
            return len(self._pending) + (self._running is not None)

    def snapshot(self) -> tuple[QueuedPrompt | None, list[QueuedPrompt]]:
        """(running, pending) seen at one instant."""
        with self._condition:
            return self._running, list(self._pending.values())

    def knows(self, prompt_id: str) -> bool:
        with self._condition:
            return prompt_id in self._pending or (self._running is not None and self._running.prompt_id == prompt_id)

    def is_full(self) -> bool:
        with self._condition:
            return len(self._pending) >= self.max_pending

    def next_number(self) -> int:
        with self._condition:
            number = self._next_number
            self._next_number += 1
            return number

    def advance_numbers(self, past: int) -> None:
        """Make the next number larger than `past` (numbers stay unique across restarts)."""
        with self._condition:
            self._next_number = max(self._next_number, past + 1)

    def put(self, item: QueuedPrompt, *, force: bool = False) -> None:
        """Append a prompt; QueueFull when max_pending are waiting (`force`: prompts reloaded at start)."""
        with self._condition:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if not force and len(self._pending) >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} prompts pending); try again later")
            self._pending[item.prompt_id] = item
            self._next_number = max(self._next_number, item.number + 1)
            self._condition.notify()

    def remove(self, prompt_ids: Iterable[str]) -> tuple[list[QueuedPrompt], dict[str, str]]:
        """Drop pending prompts; (removed ones, {id: why it was not removed})."""
        removed: list[QueuedPrompt] = []
        refused: dict[str, str] = {}
        with self._condition:
            for prompt_id in prompt_ids:
                item = self._pending.pop(prompt_id, None)
                if item is not None:
                    removed.append(item)
                elif self._running is not None and self._running.prompt_id == prompt_id:
                    refused[prompt_id] = "running; stop it with an interrupt message"
                elif not any(prompt_id == done.prompt_id for done in removed):
                    refused[prompt_id] = "not in the queue"
        return removed, refused

    def clear(self) -> list[QueuedPrompt]:
        with self._condition:
            removed = list(self._pending.values())
            self._pending.clear()
        return removed

    def take(self) -> QueuedPrompt | None:
        """(Worker thread) wait for the next prompt and mark it running; None once the queue is closed."""
        with self._condition:
            while not self._closed and not self._pending:
                self._condition.wait()
            if self._closed:
                return None
            _, item = self._pending.popitem(last=False)
            self._running = item
            return item

    def finish(self) -> None:
        """(Worker thread) the running prompt is over."""
        with self._condition:
            self._running = None

    def close(self) -> None:
        """Stop handing out prompts; pending ones stay (to be saved) and `put` is refused."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    # ---------------------------------------------------------------- persistence

    def save(self, path: Path) -> int:
        """Write the pending prompts (in order) to `path` atomically; returns how many were saved."""
        with self._condition:
            items = [item.to_json() for item in self._pending.values()]
            next_number = self._next_number
        write_json_atomic(path, {"version": QUEUE_FILE_VERSION, "next_number": next_number, "pending": items})
        return len(items)

    def load(self, path: Path, skip: Callable[[str], bool]) -> int:
        """Re-queue prompts saved by `save`, except those `skip` names (e.g. already in the history)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the saved queue %s: %s", path, exc)
            return 0
        if not isinstance(data, dict) or data.get("version") != QUEUE_FILE_VERSION:
            logger.warning("ignoring the saved queue %s: unknown format", path)
            return 0
        next_number = data.get("next_number")
        if isinstance(next_number, int):
            self.advance_numbers(next_number - 1)
        loaded = 0
        for raw in data.get("pending") or []:
            try:
                item = QueuedPrompt.from_json(raw)
            except (KeyError, ValueError) as exc:
                logger.warning("skipping a saved prompt in %s: %s", path, exc)
                continue
            if skip(item.prompt_id) or self.knows(item.prompt_id):
                continue
            self.put(item, force=True)
            loaded += 1
        return loaded


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one.

    `durable=False` skips the fsync: the rename is still atomic, but after a power cut the file may
    be empty (readers skip unreadable files); worth it where a write happens for every prompt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
