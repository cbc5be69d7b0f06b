"""Small durable-file helpers shared by the storage modules (blocking; run them in a thread).

Everything here raises :class:`OSError` untouched: the caller (``_storage.py``) maps it to
:class:`microtrio.StateError` at the seam, where it knows which operation failed.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

__all__ = [
    "COMMIT_HINT_NAME",
    "HINT_SIZE",
    "atomic_write",
    "decode_commit_hint",
    "encode_commit_hint",
    "fsync_dir",
    "rewrite_in_place",
    "sync_data",
    "write_all",
]

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


# -- the commit hint ----------------------------------------------------------------------
#
# ``commit`` holds one 16-byte record, rewritten in place (never fsynced) whenever only the
# commit index changes: magic "MTCI" | commit u64 | crc32(magic + commit) u32. The commit
# index needs no synchronous durability (it is volatile in the Raft paper, and every entry
# at or below it was made durable before it was recorded), so this costs a write to the page
# cache instead of three fsyncs. A process crash keeps it; a power loss may leave an older
# value, a torn record or no file at all: the reader then falls back to the commit index of
# the hard-state file, a lower bound that is always safe (the torn-tail rule and the
# truncation guard only get more conservative).

COMMIT_HINT_NAME = "commit"
_HINT = struct.Struct("<4sQ")
_HINT_MAGIC = b"MTCI"
HINT_SIZE = _HINT.size + 4


def encode_commit_hint(commit: int) -> bytes:
    record = _HINT.pack(_HINT_MAGIC, commit)
    return record + zlib.crc32(record).to_bytes(4, "little")


def decode_commit_hint(buf: bytes) -> int | None:
    """The commit index in a hint record, or None if it is missing, torn or foreign."""
    if len(buf) != HINT_SIZE:
        return None
    magic, commit = _HINT.unpack_from(buf, 0)
    if magic != _HINT_MAGIC or buf[_HINT.size :] != zlib.crc32(buf[: _HINT.size]).to_bytes(
        4, "little"
    ):
        return None
    return int(commit)


def rewrite_in_place(fd: int, data: bytes) -> None:
    """Overwrite the start of an open file with ``data`` (no sync)."""
    os.lseek(fd, 0, os.SEEK_SET)
    write_all(fd, data)
