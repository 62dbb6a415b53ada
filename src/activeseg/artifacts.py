"""Atomic files, and staged artifacts: every artifact is written to a temporary sibling and renamed into place.

A process killed mid-write therefore leaves either the old file or the new one, never a truncated one that a
resumed run would trust; :func:`stage` reloads what an earlier (killed) attempt finished instead of recomputing it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o644)  # mkstemp creates 0600
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Atomically write bytes."""

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes_atomic(path, text.encode())


def copy_atomic(source: Path, destination: Path) -> None:
    """Atomically copy a file."""
    write_bytes_atomic(destination, Path(source).read_bytes())


def write_json_atomic(path: Path, data: Any) -> None:
    """Atomically write JSON (sorted keys, so equal data gives equal bytes)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON artifact."""
    return json.loads(Path(path).read_text())


def stage(path: Path, compute: Callable[[], T], save: Callable[[Path, T], None], load: Callable[[Path], T | None]) -> T:
    """The artifact at ``path`` if an earlier attempt finished it, else ``compute()``, saved before it is returned.

    ``load`` may return None for an artifact that no longer fits (it is then recomputed and replaced).
    """
    if path.exists():
        loaded = load(path)
        if loaded is not None:
            return loaded
    value = compute()
    save(path, value)
    return value
