"""Small durable-file helpers shared by the storage modules (blocking; run them in a thread).

Everything here raises :class:`OSError` untouched: the caller (``_storage.py``) maps it to
:class:`microtrio.StateError` at the seam, where it knows which operation failed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "sync_data", "write_all"]

# fdatasync flushes the data and the metadata needed to read it back (the file size), which
# is all an append-only log needs; fall back to fsync where it does not exist (macOS).
_datasync = getattr(os, "fdatasync", os.fsync)


def sync_data(fd: int) -> None:
    """Flush a file's data (and its size) to stable storage."""
    _datasync(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` at the current position (``os.write`` may be partial)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make creations, renames and unlinks inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Replace ``path`` with ``chunks`` atomically: tmp file, fsync, rename, fsync directory.

    After a crash the file holds either its old or its new contents; a leftover
    ``<name>.tmp`` may remain and is ignored (and removed) by the readers.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
