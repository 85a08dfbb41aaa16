"""Confining user-given file names to the engine's input and output directories.

Workflows come from anywhere (a file, a websocket client), so a name in a workflow must never
reach outside the configured directories: absolute paths and `..` are refused outright, and the
resolved path (symlinks followed) must still lie inside the directory.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from nodegraph.errors import InputValueError


def confine(base: Path, name: str, *, input_name: str | None = None, must_exist: bool = False) -> Path:
    """Return `base / name` resolved, or raise InputValueError if it would leave `base`.

    With must_exist, the path must also be an existing regular file.
    """
    where = "the input directory" if must_exist else "the output directory"
    if not isinstance(name, str) or not name.strip():
        raise InputValueError(input_name, "a file name is required", code="path_not_allowed")
    if "\x00" in name:
        raise InputValueError(input_name, "file names cannot contain NUL characters", code="path_not_allowed")
    pure = PurePosixPath(name)
    if pure.is_absolute() or Path(name).is_absolute():
        raise InputValueError(
            input_name,
            f"{name!r} is an absolute path; give a path relative to {where} ({base})",
            code="path_not_allowed",
        )
    if ".." in pure.parts:
        raise InputValueError(
            input_name,
            f"{name!r} contains '..'; paths must stay inside {where} ({base})",
            code="path_not_allowed",
        )
    root = base.resolve()
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root):
        raise InputValueError(
            input_name,
            f"{name!r} resolves to {resolved}, outside {where} ({root}); symlinks may not leave it",
            code="path_not_allowed",
        )
    if must_exist:
        if not resolved.exists():
            raise InputValueError(input_name, f"{name!r} not found in {where} ({root})", code="file_not_found")
        if not resolved.is_file():
            raise InputValueError(input_name, f"{name!r} is not a regular file", code="file_not_found")
    return resolved


NAME_MAX = 255  # bytes in one file name on the filesystems this runs on


def output_target(base: Path, prefix: str, suffix: str, *, input_name: str | None = None) -> tuple[Path, str]:
    """(directory, stem) for files named STEM + suffix under `base`, checked before anything is written: the
    prefix stays inside `base`, ends in a usable name that fits the filesystem, no folder on the way is a
    file, and the nearest existing folder is writable. InputValueError says which and what to do."""
    target = confine(base, prefix, input_name=input_name)
    stem = PurePosixPath(prefix).name
    if stem in ("", ".", "..") or prefix.endswith(("/", "\\")):
        raise InputValueError(input_name, f"{prefix!r} names a folder, not a file name prefix; add a name, "
                              f"e.g. {prefix.rstrip('/')}/image", code="path_not_allowed")
    if len((stem + suffix).encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise InputValueError(input_name, f"the file names would be longer than {NAME_MAX} bytes; use a prefix "
                              f"of at most {NAME_MAX - len(suffix)}", code="path_not_allowed")
    directory = target.parent
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputValueError(input_name, f"{existing} is a file, so no folder can be made there; choose another "
                              "prefix or output directory", code="path_not_allowed")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputValueError(input_name, f"cannot write into {existing} (permission denied); choose another "
                              "output directory", code="path_not_allowed")
    return directory, stem


def next_number(directory: Path, prefix: str) -> int:
    """The counter after the highest PREFIX_NNNNN_.png in `directory` (1 when there is none): how SaveImage
    numbers its files, and how a cluster run's files are numbered again where they land."""
    pattern = re.compile(re.escape(prefix) + r"_(\d{5,})_\.png")
    highest = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def write_new(path: Path, write: Callable[[object], None]) -> None:
    """Write a file whole or not at all, never over an existing one (FileExistsError, so callers pick another
    name): `write(handle)` fills a hidden temporary beside `path`, which is then hard-linked into place (atomic,
    and it fails if the name is taken). An interrupted write leaves no file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
