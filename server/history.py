"""The history of finished prompts: in memory for answers, one JSON file per prompt on disk for restarts.

An entry is ComfyUI-shaped:

    {"prompt_id", "number", "client_id", "prompt": WORKFLOW, "params": {...},
     "outputs": {NODE: {...recorded values...}},
     "status": {"status_str": "success" | "error" | "interrupted", "completed": bool,
                "messages": [[EVENT, DATA], ...]},
     "files": [{"filename", "subfolder", "type"}], "meta": {timestamps, executed, cached, seconds}}

Entries are added on the worker thread (so the file is written before the client hears the run is
over) and read on the event loop thread, hence the lock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from nodegraph.server.protocol import ID_PATTERN
from nodegraph.server.queue import write_json_atomic

logger = logging.getLogger("nodegraph.server")

_ID = re.compile(ID_PATTERN)


class HistoryStore:
    """Finished prompts by id, oldest first, at most `max_items` (the oldest are forgotten, file too)."""

    def __init__(self, directory: Path, max_items: int = 10_000) -> None:
        self.directory = directory
        self.max_items = max_items
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_number = -1

    def load(self) -> int:
        """Read every entry file; unreadable ones are skipped with a warning (never deleted)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        loaded: list[dict[str, Any]] = []
        for path in self.directory.glob("*.json"):
            if not _ID.match(path.stem):
                continue
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable history file %s: %s", path, exc)
                continue
            if not isinstance(entry, dict) or entry.get("prompt_id") != path.stem:
                logger.warning("skipping history file %s: it does not describe prompt %r", path, path.stem)
                continue
            if not isinstance(entry.get("number"), int):
                logger.warning("skipping history file %s: no prompt number", path)
                continue
            loaded.append(entry)
        loaded.sort(key=lambda entry: entry["number"])
        with self._lock:
            for entry in loaded:
                self._entries[entry["prompt_id"]] = entry
                self.max_number = max(self.max_number, entry["number"])
            self._trim()
        return len(loaded)

    def add(self, entry: dict[str, Any]) -> None:
        """Persist an entry and make it visible; a failing disk is logged, the entry kept in memory."""
        prompt_id = entry["prompt_id"]
        try:
            write_json_atomic(self._path(prompt_id), entry, durable=False)
        except (OSError, TypeError, ValueError) as exc:
            logger.error("could not write the history of prompt %s: %s", prompt_id, exc)
        with self._lock:
            self._entries[prompt_id] = entry
            self._entries.move_to_end(prompt_id)
            self.max_number = max(self.max_number, entry["number"])
            self._trim()

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(prompt_id)

    def __contains__(self, prompt_id: object) -> bool:
        with self._lock:
            return prompt_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def snapshot(self, max_items: int | None = None) -> dict[str, dict[str, Any]]:
        """The most recent `max_items` entries (all by default), oldest first."""
        with self._lock:
            items = list(self._entries.items())
        if max_items is not None:
            items = items[-max_items:]
        return dict(items)

    def _trim(self) -> None:
        while len(self._entries) > self.max_items:
            prompt_id, _ = self._entries.popitem(last=False)
            try:
                self._path(prompt_id).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove old history file of %s: %s", prompt_id, exc)

    def _path(self, prompt_id: str) -> Path:
        return self.directory / f"{prompt_id}.json"
