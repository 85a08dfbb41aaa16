"""Confining user-given file names to the engine's input and output directories.

Workflows come from anywhere (a file, a websocket client), so a name in a workflow must never
reach outside the configured directories: absolute paths and `..` are refused outright, and the
resolved path (symlinks followed) must still lie inside the directory.
"""

from __future__ import annotations

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
