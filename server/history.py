"""The history of finished prompts: one JSON file per prompt on disk, only an index in memory.

An entry is ComfyUI-shaped:

    {"prompt": [number, prompt_id, PROMPT, extra_data, outputs_to_execute],
     "outputs": {NODE: {...recorded values, e.g. "images": [{filename, subfolder, type}]}},
     "status": {"status_str": "success" | "error", "completed": bool, "messages": [[EVENT, DATA], ...]},
     "meta": {NODE: {"node_id", "display_node", "parent_node", "real_node_id"}},
     "nodegraph": {"params", "files", "seconds", "executed", "cached", "finished_at", "seq", ...}}

Entries are written on the worker thread (so the file exists before the client hears the run is over)
and read on request, so memory holds ids and numbers only, however large the entries are; answers are
paged (`page`) and bounded in bytes. At most `max_items` are kept (the oldest are deleted, file too).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodegraph.server import jsonio
from nodegraph.server.protocol import ID_PATTERN

logger = logging.getLogger("nodegraph.server")

_ID = re.compile(ID_PATTERN)


def summary(entry: dict[str, Any], size: int) -> dict[str, Any]:
    """What the index keeps of an entry (for /jobs listings without reading the file): a few hundred bytes."""
    own = entry.get("nodegraph") if isinstance(entry.get("nodegraph"), dict) else {}
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    preview = None
    count = 0
    for node_id, output in outputs.items():
        images = output.get("images") if isinstance(output, dict) else None
        if isinstance(images, list):
            count += len(images)
            if preview is None and images and isinstance(images[0], dict):
                first = images[0]
                preview = {key: first.get(key) for key in ("filename", "subfolder", "type")}
                preview.update(nodeId=str(node_id), mediaType="images")
    error = None
    for message in (entry.get("status") or {}).get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            data = message[1] if isinstance(message[1], dict) else {}
            error = {key: data.get(key) for key in ("node_id", "node_type", "exception_message", "exception_type")}
    prompt = entry["prompt"]
    return {
        "size": size,
        "number": prompt[0],
        "status": own.get("status", (entry.get("status") or {}).get("status_str")),
        "submitted_at": own.get("submitted_at"),
        "started_at": own.get("started_at"),
        "finished_at": own.get("finished_at"),
        "preview": preview,
        "outputs_count": count,
        "error": error,
    }


@dataclass
class Page:
    entries: dict[str, dict[str, Any]]
    total: int  # entries kept in all
    left_off: int  # entries of the requested page not included because of the byte budget


class HistoryStore:
    """Finished prompts by id, in the order they finished."""

    def __init__(self, directory: Path, max_items: int = 10_000) -> None:
        self.directory = directory
        self.max_items = max_items
        self._index: OrderedDict[str, dict[str, Any]] = OrderedDict()  # prompt_id -> summary, oldest first
        self._lock = threading.Lock()
        self._seq = 0
        self.max_number: float = -1

    def load(self) -> int:
        """Index every entry file; unreadable ones are skipped with a warning (never deleted)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, float, str, int]] = []
        for path in self.directory.glob("*.json"):
            if not _ID.match(path.stem):
                continue
            try:
                raw = path.read_bytes()
                entry = json.loads(raw)
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable history file %s: %s", path, exc)
                continue
            prompt = entry.get("prompt") if isinstance(entry, dict) else None
            if not (isinstance(prompt, list) and len(prompt) >= 2 and prompt[1] == path.stem):
                logger.warning("skipping history file %s: it does not describe prompt %r", path, path.stem)
                continue
            number = prompt[0]
            if not isinstance(number, (int, float)):
                logger.warning("skipping history file %s: no prompt number", path)
                continue
            own = entry.get("nodegraph") if isinstance(entry.get("nodegraph"), dict) else {}
            seq = own.get("seq")
            order = seq if isinstance(seq, (int, float)) else number
            found.append((order, number, path.stem, summary(entry, len(raw))))
        found.sort(key=lambda item: item[:3])
        with self._lock:
            for seq, number, prompt_id, brief in found:
                self._index[prompt_id] = brief
                self.max_number = max(self.max_number, number)
                self._seq = max(self._seq, int(seq) + 1)
            self._trim()
        return len(found)

    def next_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """Persist an entry and make it visible; a failing disk is logged (the entry is then lost)."""
        try:
            size = jsonio.write_atomic(self._path(prompt_id), entry)
        except OSError as exc:
            logger.error("could not write the history of prompt %s: %s", prompt_id, exc)
            return
        number = entry["prompt"][0]
        brief = summary(entry, size)
        with self._lock:
            self._index[prompt_id] = brief
            self._index.move_to_end(prompt_id)
            if isinstance(number, (int, float)):
                self.max_number = max(self.max_number, number)
            self._trim()

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            if prompt_id not in self._index:
                return None
        return self._read(prompt_id)

    def __contains__(self, prompt_id: object) -> bool:
        with self._lock:
            return prompt_id in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def page(self, max_items: int, offset: int | None = None, max_bytes: int | None = None) -> Page:
        """Up to `max_items` entries, oldest first, from `offset` (counted from the oldest; by default the
        latest `max_items`), stopping before `max_bytes` of entry files (at least one entry is returned)."""
        with self._lock:
            ids = list(self._index.items())
        total = len(ids)
        start = max(0, total - max_items) if offset is None else min(offset, total)
        chosen = ids[start : start + max_items]
        entries: dict[str, dict[str, Any]] = {}
        used = 0
        for index, (prompt_id, brief) in enumerate(chosen):
            size = brief["size"]
            if max_bytes is not None and entries and used + size > max_bytes:
                return Page(entries, total, len(chosen) - index)
            entry = self._read(prompt_id)
            if entry is not None:
                entries[prompt_id] = entry
                used += size
        return Page(entries, total, 0)

    def summaries(self) -> list[tuple[str, dict[str, Any]]]:
        """(prompt_id, summary) of every entry, oldest first."""
        with self._lock:
            return list(self._index.items())

    def delete(self, prompt_ids: list[str]) -> list[str]:
        deleted = []
        with self._lock:
            for prompt_id in prompt_ids:
                if self._index.pop(prompt_id, None) is not None:
                    deleted.append(prompt_id)
        for prompt_id in deleted:
            self._unlink(prompt_id)
        return deleted

    def clear(self) -> int:
        with self._lock:
            ids = list(self._index)
            self._index.clear()
        for prompt_id in ids:
            self._unlink(prompt_id)
        return len(ids)

    def _read(self, prompt_id: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(prompt_id).read_bytes())
        except (OSError, ValueError) as exc:  # deleted meanwhile, or damaged on disk
            logger.warning("could not read the history of prompt %s: %s", prompt_id, exc)
            return None
        return entry if isinstance(entry, dict) else None

    def _trim(self) -> None:
        while len(self._index) > self.max_items:
            prompt_id, _ = self._index.popitem(last=False)
            self._unlink(prompt_id)

    def _unlink(self, prompt_id: str) -> None:
        try:
            self._path(prompt_id).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove the history file of %s: %s", prompt_id, exc)

    def _path(self, prompt_id: str) -> Path:
        return self.directory / f"{prompt_id}.json"
