"""The prompt queue: pending prompts in order of their number, the one running, and their files on disk.

Persistence is a journal of one file per prompt, written on every change, so that no moment exists at
which the disk disagrees with the queue by more than the change being made:

    STATE/queue/NUMBER_ID.json     a pending prompt (written when it is queued, deleted when it is removed)
    STATE/running/NUMBER_ID.json   a prompt running now (moved there when it starts, deleted once its
                                   history entry is written); one with the local backend, up to one per
                                   worker with Ray

On start (`recover`), a pending prompt whose history entry exists already ran and is dropped, the rest
are queued again in order; a prompt left in running/ was cut off by a hard kill and is reported (the
log says so, and the server writes it a history entry) but not run again. So nothing runs twice, a
deleted prompt never comes back, and a hard kill loses at most the prompts that were running.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.server import jsonio
from nodegraph.server.security import valid_id

logger = logging.getLogger("nodegraph.server")


class QueueFull(Exception):
    pass


@dataclass
class QueuedPrompt:
    """A prompt accepted by the server: what to run, for whom, and its place in line."""

    prompt_id: str
    number: float
    client_id: str | None
    prompt: dict[str, Any]  # the workflow as submitted (bare or wrapped)
    params: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)  # ComfyUI's: extra_pnginfo, ...
    outputs: list[str] | None = None  # partial_execution_targets: the output nodes to run (None: all)
    submitted_at: float = field(default_factory=time.time)
    interrupt: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    # The engine's PreparedRun from submission (validated then), handed to the worker so it is not prepared
    # again; a prompt reloaded from disk has none and is prepared when it runs.
    prepared: Any = field(default=None, repr=False, compare=False)
    file: Path | None = field(default=None, repr=False, compare=False)

    def comfy_item(self) -> list[Any]:
        """ComfyUI's queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute].

        The client id is left out of extra_data: ids are private to their client (see server/README.md).
        """
        return [self.number, self.prompt_id, self.prompt, self.public_extra_data(), list(self.outputs or [])]

    def public_extra_data(self) -> dict[str, Any]:
        return {key: value for key, value in self.extra_data.items() if key != "client_id"}

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "number": self.number,
            "client_id": self.client_id,
            "prompt": self.prompt,
            "params": self.params,
            "extra_data": self.extra_data,
            "outputs": self.outputs,
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> QueuedPrompt:
        if not isinstance(data, dict):
            raise ValueError("a queued prompt must be an object")
        item = cls(
            prompt_id=data["prompt_id"],
            number=data["number"],
            client_id=data.get("client_id"),
            prompt=data["prompt"],
            params=data.get("params") or {},
            extra_data=data.get("extra_data") or {},
            outputs=data.get("outputs"),
            submitted_at=data.get("submitted_at", time.time()),
        )
        if not (
            isinstance(item.prompt_id, str)
            and valid_id(item.prompt_id)
            and isinstance(item.number, (int, float))
            and (item.client_id is None or isinstance(item.client_id, str))
            and isinstance(item.prompt, dict)
            and isinstance(item.params, dict)
            and isinstance(item.extra_data, dict)
            and (item.outputs is None or isinstance(item.outputs, list))
        ):
            raise ValueError("a queued prompt has fields of the wrong type")
        return item


@dataclass
class Recovered:
    """What `recover` found on disk."""

    requeued: int = 0
    already_done: int = 0
    cut_off: list[QueuedPrompt] = field(default_factory=list)  # running at a hard kill: not run again


class PromptQueue:
    """Pending prompts ordered by (number, arrival) plus the running ones, shared by the loop and the workers.

    The loop adds and removes pending prompts; a worker thread `take`s the next one as soon as it can run
    it (the local backend: one at a time; Ray: one per pool worker). Everything is under one lock. With a
    `directory`, every change is written there (see the module docstring) before the call returns.
    """

    def __init__(self, max_pending: int, directory: Path | None = None) -> None:
        self.max_pending = max_pending
        self.directory = directory
        self._pending: dict[str, QueuedPrompt] = {}
        self._order: list[tuple[float, int, str]] = []  # sorted (number, arrival, prompt_id)
        self._arrival = itertools.count()
        self._running: dict[str, QueuedPrompt] = {}  # in the order they started
        self._closed = False
        self._next_number = 0
        self._condition = threading.Condition()

    @property
    def running(self) -> list[QueuedPrompt]:
        """The prompts running now, in the order they started."""
        with self._condition:
            return list(self._running.values())

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed

    @property
    def pending(self) -> list[QueuedPrompt]:
        with self._condition:
            return [self._pending[key] for _, _, key in self._order]

    @property
    def remaining(self) -> int:
        """Pending plus running: ComfyUI's exec_info.queue_remaining."""
        with self._condition:
            return len(self._pending) + len(self._running)

    def snapshot(self) -> tuple[list[QueuedPrompt], list[QueuedPrompt]]:
        """(running, pending) seen at one instant."""
        with self._condition:
            return list(self._running.values()), [self._pending[key] for _, _, key in self._order]

    def knows(self, prompt_id: str) -> bool:
        with self._condition:
            return prompt_id in self._pending or prompt_id in self._running

    def is_full(self) -> bool:
        with self._condition:
            return len(self._pending) >= self.max_pending

    def next_number(self, front: bool = False) -> int:
        """The next prompt number; `front` makes it negative, so it runs before every other (ComfyUI's rule)."""
        with self._condition:
            number = self._next_number
            self._next_number += 1
            return -number if front else number

    def advance_numbers(self, past: float) -> None:
        """Make the next number larger than `past` (numbers stay unique across restarts)."""
        with self._condition:
            self._next_number = max(self._next_number, int(past) + 1)

    def put(self, item: QueuedPrompt, *, force: bool = False) -> None:
        """Queue a prompt (and write its file); QueueFull when max_pending are waiting (`force`: reloads)."""
        with self._condition:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if not force and len(self._pending) >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} prompts pending); try again later")
            if item.file is None and self.directory is not None:
                item.file = self.directory / "queue" / f"{_file_stem(item)}.json"
                jsonio.write_atomic(item.file, item.to_json())
            self._pending[item.prompt_id] = item
            bisect.insort(self._order, (item.number, next(self._arrival), item.prompt_id))
            if isinstance(item.number, int):
                self._next_number = max(self._next_number, item.number + 1)
            self._condition.notify()

    def remove(self, prompt_ids: Iterable[str]) -> tuple[list[QueuedPrompt], dict[str, str]]:
        """Drop pending prompts (and their files); (removed ones, {id: why it was not removed})."""
        removed: list[QueuedPrompt] = []
        refused: dict[str, str] = {}
        with self._condition:
            for prompt_id in prompt_ids:
                item = self._pending.pop(prompt_id, None)
                if item is not None:
                    removed.append(item)
                elif prompt_id in self._running:
                    refused[prompt_id] = "running; stop it with an interrupt"
                elif not any(prompt_id == done.prompt_id for done in removed):
                    refused[prompt_id] = "not in the queue"
            if removed:
                gone = {item.prompt_id for item in removed}
                self._order = [entry for entry in self._order if entry[2] not in gone]
                for item in removed:
                    _unlink(item.file)
        return removed, refused

    def clear(self) -> list[QueuedPrompt]:
        with self._condition:
            removed = [self._pending[key] for _, _, key in self._order]
            self._pending.clear()
            self._order.clear()
            for item in removed:
                _unlink(item.file)
        return removed

    def take(self) -> QueuedPrompt | None:
        """(A worker thread) wait for the next prompt and mark it running; None once the queue is closed."""
        with self._condition:
            while not self._closed and not self._order:
                self._condition.wait()
            if self._closed:
                return None
            _, _, prompt_id = self._order.pop(0)
            item = self._pending.pop(prompt_id)
            self._running[prompt_id] = item
            if item.file is not None and self.directory is not None:
                running = self.directory / "running" / item.file.name
                try:
                    _move(item.file, running)
                    item.file = running
                except OSError as exc:
                    logger.error("could not move %s to %s: %s", item.file, running, exc)
            return item

    def finish(self, item: QueuedPrompt) -> None:
        """(Its worker thread) a running prompt is over (its history entry is written): forget its file."""
        with self._condition:
            if self._running.pop(item.prompt_id, None) is not None:
                _unlink(item.file)

    def finish_file(self, item: QueuedPrompt) -> None:
        """Forget the journal file of a prompt that will not run (one a hard kill cut off)."""
        _unlink(item.file)

    def close(self) -> None:
        """Stop handing out prompts; pending ones stay (their files too) and `put` is refused."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    # ---------------------------------------------------------------- recovery

    def recover(self, done: Callable[[str], bool]) -> Recovered:
        """Reload the journal after a restart (see the module docstring); `done(id)`: it has a history entry."""
        found = Recovered()
        if self.directory is None:
            return found
        for path in sorted(_json_files(self.directory / "running")):
            item = _read_item(path)
            if item is None or done(item.prompt_id):
                _unlink(path)
                continue
            logger.warning(
                "prompt %s (number %s) was running when the server stopped without shutting down; "
                "it is not run again",
                item.prompt_id,
                item.number,
            )
            item.file = path
            found.cut_off.append(item)
        loaded: list[QueuedPrompt] = []
        for path in _json_files(self.directory / "queue"):
            item = _read_item(path)
            if item is None:
                continue
            if done(item.prompt_id) or self.knows(item.prompt_id):
                found.already_done += 1
                _unlink(path)
                continue
            item.file = path
            loaded.append(item)
        for item in sorted(loaded, key=lambda item: (item.number, item.submitted_at)):
            self.put(item, force=True)
            if isinstance(item.number, (int, float)):
                self.advance_numbers(abs(item.number))
            found.requeued += 1
        return found


def _file_stem(item: QueuedPrompt) -> str:
    number = f"{item.number:+021.6f}" if isinstance(item.number, float) else f"{item.number:+013d}"
    return f"{number}_{item.prompt_id}"


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except FileNotFoundError:
        if not source.exists():
            raise
        target.parent.mkdir(parents=True, exist_ok=True)  # made on first use, not checked on every move
        os.replace(source, target)


def _json_files(directory: Path) -> list[Path]:
    try:
        return [path for path in directory.iterdir() if path.suffix == ".json" and not path.name.startswith(".")]
    except FileNotFoundError:
        return []


def _read_item(path: Path) -> QueuedPrompt | None:
    try:
        return QueuedPrompt.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("skipping the saved prompt %s: %s", path, exc)
        return None


def _unlink(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.error("could not remove %s: %s", path, exc)
