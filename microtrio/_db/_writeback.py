"""Early writeback of the WAL file: :class:`WalWriteback`.

On a replicated member the writer commits with ``synchronous=NORMAL``: nothing is synced at
a commit, and the WAL's pages stay dirty in the page cache until a checkpoint syncs the WAL
before copying it back (the kernel's own writeback starts only after 30 s or when a tenth
of the memory is dirty). A checkpoint every 4 000 pages therefore flushed 16 MiB at once,
and the Raft log's durable appends on the same disk queued behind that flush: measured on
the benchmark machine, the checkpoint took 150-160 ms and log appends 130-150 ms in it,
which every write waited for (the benchmark's maximum latency at 16 clients).

So the Applier asks for a writeback every :data:`~._apply.WRITEBACK_PAGES` pages, and the
database's checkpoint task hands the WAL to the kernel with
``sync_file_range(SYNC_FILE_RANGE_WRITE)``: the kernel starts writing the dirty pages and
returns without waiting for them or syncing anything (durability does not change: the
checkpoint still syncs the WAL before it copies). The disk then gets the WAL a megabyte at
a time, and a checkpoint's sync has little left to do. Linux only; elsewhere (or where the
call fails) :meth:`WalWriteback.kick` does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
from typing import Final, final

__all__ = ["WalWriteback"]

logger = logging.getLogger("microtrio.db")

_SYNC_FILE_RANGE_WRITE: Final = 2


def _sync_file_range() -> object | None:
    """libc's ``sync_file_range``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


@final
class WalWriteback:
    """Start the writeback of the dirty pages of the WAL at ``path`` (blocking calls: run
    :meth:`kick` in a worker thread, one at a time; see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._call = _sync_file_range()
        #: Writebacks started (statistics, tests).
        self.kicks = 0

    @property
    def available(self) -> bool:
        return self._call is not None

    def kick(self) -> None:
        """Have the kernel start writing the WAL's dirty pages; never waits for them."""
        call = self._call
        if call is None:
            return
        fd = self._open()
        if fd is None:
            return
        if call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            logger.warning(
                "WAL writeback of %s failed (%s); not tried again", self._path, os.strerror(err)
            )
            self._call = None
            return
        self.kicks += 1

    def _open(self) -> int | None:
        """The WAL's descriptor, opened again when SQLite removed the file meanwhile."""
        fd = self._fd
        if fd is not None and os.fstat(fd).st_nlink == 0:
            self.close()
            fd = None
        if fd is None:
            try:
                fd = self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    logger.warning("cannot open %s for writeback: %s", self._path, exc)
                return None
        return fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
