"""Durable appends without a worker thread: one io_uring write with ``RWF_DSYNC`` (issue 4).

The log store's hot path is "append a few hundred bytes to the newest segment and make them
durable". In a worker thread that costs two hand-offs (event loop -> thread -> event loop)
around the fdatasync, each a cross-CPU wake-up; on a loaded two-core machine they cost as
much as the fdatasync itself (``bench/trace_write.py``). Here the event loop hands the write
to the kernel instead: one ``IORING_OP_WRITE`` with ``RWF_DSYNC`` (the data and the metadata
needed to read it back are durable when it completes, as after ``write`` + ``fdatasync``),
submitted with one non-blocking ``io_uring_enter`` (the kernel runs the write on its own
workers), completing on an eventfd that trio waits on. No Python thread, no GIL hand-off,
and the event loop never blocks.

The ring is driven through ``ctypes`` and the raw system calls, one write in flight at a
time (the store's limiter serialises its calls). It is used only where it is known to be
sound: Linux on x86-64 (the system call numbers; x86's store ordering for the ring's head
and tail words, written by this thread and read by the kernel only inside
``io_uring_enter`` or after a completion it already posted), a kernel with the single-mmap
ring and positional writes (5.6 and later), and the ring set up without error (a seccomp
filter, ``kernel.io_uring_disabled`` or a memory limit refuse it). Anywhere else
:func:`open_ring` returns None and the store keeps its worker thread.

It is on by default where it is sound; ``MICROTRIO_IO_URING=0`` in the environment (or
``open_ring(enabled=False)``) keeps the worker thread. A completion the kernel puts on its
CQ overflow list (it does when it finds the completion ring full) is not in the ring, and
a write waiting for it must have the kernel flush that list: a waiting write checks the
ring's ``IORING_SQ_CQ_OVERFLOW`` flag whenever it wakes with nothing, and also wakes every
``_WAIT_SLICE`` and flushes, so it never waits for good. With one write in flight the ring
(8 completions) cannot fill, yet in one benchmark run on kernel 6.18 (2026-11-28) a
member's completion sat on the overflow list with the ring empty, and the write of that
time, which waited on the eventfd alone, never returned. The cause is not known; it has
not been seen since (200 000 writes from three processes with the CPUs saturated, and the
benchmark runs since): ``overflow_flushes`` counts the completions found that way, and
the first is logged as a warning.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import struct
import sys
import weakref
from typing import Final, final

import trio

__all__ = ["ENV_VAR", "DurableRing", "open_ring"]

logger = logging.getLogger("microtrio.replication.storage")

ENV_VAR: Final = "MICROTRIO_IO_URING"

_SYS_SETUP, _SYS_ENTER, _SYS_REGISTER = 425, 426, 427  # x86-64 (also the generic table)
_OP_WRITE: Final = 23
_RWF_DSYNC: Final = 2
_REGISTER_EVENTFD: Final = 4
_FEAT_SINGLE_MMAP: Final = 1 << 0
_FEAT_RW_CUR_POS: Final = 1 << 3  # 5.6, with IORING_OP_WRITE
_OFF_SQES: Final = 0x10000000
_ENTER_GETEVENTS: Final = 1
_SQ_CQ_OVERFLOW: Final = 1 << 1  # in the SQ ring's flags word
_WAIT_SLICE: Final = 0.05  # seconds between checks of the overflow list while waiting
_ENTRIES: Final = 4

_U32 = struct.Struct("=I")
# opcode flags ioprio fd | off | addr | len rw_flags | user_data | 24 bytes unused
_SQE = struct.Struct("=BBHiQQIIQ24x")
_CQE = struct.Struct("=QiI")  # user_data res flags

# Errors that mean "this kernel or file cannot take the write this way", reported before
# anything was written: the store falls back to its worker thread for good.
UNSUPPORTED_ERRNOS: Final = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})


def _supported_platform() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def _enabled_by_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "no", "off", "false")


class _Syscalls:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def __call__(self, number: int, *args: object) -> int:
        result = int(self._libc.syscall(ctypes.c_long(number), *args))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result


def _release(fds: list[int], maps: list[mmap.mmap]) -> None:
    """Close a ring's resources (also its finalizer: idempotent)."""
    for m in maps:
        m.close()
    maps.clear()
    for fd in fds:
        os.close(fd)
    fds.clear()


@final
class DurableRing:
    """One io_uring with its completions signalled on an eventfd; see the module docstring.

    Build it with :func:`open_ring`. One :meth:`write` at a time.
    """

    def __init__(self, syscall: _Syscalls, ring_fd: int, params: bytes) -> None:
        self._syscall = syscall
        self._fd = ring_fd
        self._fds = [ring_fd]
        self._maps: list[mmap.mmap] = []
        # close the descriptors even if nobody calls close()
        self._finalizer = weakref.finalize(self, _release, self._fds, self._maps)
        try:
            self._map(params)
        except BaseException:
            self._finalizer()
            raise
        self._next_id = 1
        self.writes = 0  # completed writes (statistics and tests)
        self.overflow_flushes = 0  # completions found only after flushing the overflow list

    def _map(self, params: bytes) -> None:
        ring_fd, syscall = self._fd, self._syscall
        sq_entries, cq_entries = struct.unpack_from("=II", params, 0)
        (
            self._sq_head,
            self._sq_tail,
            sq_mask,
            _sq_entries,
            self._sq_flags,
            _sq_dropped,
            self._sq_array,
        ) = struct.unpack_from("=7I", params, 40)
        (self._cq_head, self._cq_tail, cq_mask, _cq_entries, _cq_overflow, self._cqes) = (
            struct.unpack_from("=6I", params, 80)
        )
        size = max(self._sq_array + 4 * sq_entries, self._cqes + _CQE.size * cq_entries)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self._ring = mmap.mmap(ring_fd, size, flags, prot, offset=0)
        self._maps.append(self._ring)
        self._sqes = mmap.mmap(ring_fd, 64 * sq_entries, flags, prot, offset=_OFF_SQES)
        self._maps.append(self._sqes)
        self._sq_mask = _U32.unpack_from(self._ring, sq_mask)[0]
        self._cq_mask = _U32.unpack_from(self._ring, cq_mask)[0]
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(self.eventfd)
        syscall(
            _SYS_REGISTER,
            ctypes.c_int(ring_fd),
            ctypes.c_uint(_REGISTER_EVENTFD),
            ctypes.byref(ctypes.c_int(self.eventfd)),
            ctypes.c_uint(1),
        )

    @property
    def closed(self) -> bool:
        return not self._fds

    def close(self) -> None:
        if self._fds:
            try:
                trio.lowlevel.notify_closing(self.eventfd)
            except RuntimeError:  # outside trio: nobody can be waiting on it
                pass
        self._finalizer()

    async def write(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` of ``fd`` (ignored for an ``O_APPEND`` file)
        and return when it is durable. Raises OSError as ``write``/``fdatasync`` would.

        Not abandoned on cancellation: the kernel holds the buffer, so this waits for the
        completion whatever happens (as a write in a worker thread would)."""
        if self.closed:
            raise OSError(errno.EBADF, "the io_uring is closed")
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        assert base is not None
        done = 0
        with trio.CancelScope(shield=True):
            while done < len(data):
                try:
                    written = await self._write_once(
                        fd, base + done, len(data) - done, offset + done
                    )
                except OSError as exc:
                    if done:  # not "unsupported": part of the data is in the file
                        raise OSError(errno.EIO, f"{exc} after {done} bytes") from exc
                    raise
                if written == 0:
                    raise OSError(errno.EIO, "io_uring write made no progress")
                done += written
        self.writes += 1
        # ``data`` stays referenced until here: the kernel read it from its buffer

    async def _write_once(self, fd: int, address: int, length: int, offset: int) -> int:
        user_data = self._next_id
        self._next_id += 1
        ring = self._ring
        tail = _U32.unpack_from(ring, self._sq_tail)[0]
        slot = tail & self._sq_mask
        self._sqes[64 * slot : 64 * (slot + 1)] = _SQE.pack(
            _OP_WRITE, 0, 0, fd, offset, address, length, _RWF_DSYNC, user_data
        )
        _U32.pack_into(ring, self._sq_array + 4 * slot, slot)
        # after the entry (x86 store order); the indexes wrap at 2**32
        _U32.pack_into(ring, self._sq_tail, (tail + 1) & 0xFFFFFFFF)
        if self._enter(1, 0) != 1:
            raise OSError(errno.EAGAIN, "io_uring did not take the write")
        timed_out = False
        while True:
            result = self._reap(user_data)
            if result is not None:
                break
            overflowed = self._cq_overflowed()
            if overflowed or timed_out:
                # the completion may sit on the kernel's overflow list (see the module
                # docstring): have the kernel move that list into the ring
                self._enter(0, _ENTER_GETEVENTS)  # never blocks: min_complete is 0
                result = self._reap(user_data)
                if result is not None:
                    self.overflow_flushes += 1
                    if self.overflow_flushes == 1:
                        how = "flagged" if overflowed else "not flagged, after a wait slice"
                        logger.warning(
                            "io_uring: a completion was found only on the overflow list (%s)", how
                        )
                    break
            timed_out = True
            with trio.move_on_after(_WAIT_SLICE):
                await trio.lowlevel.wait_readable(self.eventfd)
                timed_out = False
            try:
                os.eventfd_read(self.eventfd)
            except BlockingIOError:
                pass
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        return result

    def _enter(self, to_submit: int, flags: int) -> int:
        """``io_uring_enter`` that never waits for completions (``min_complete`` 0):
        submit ``to_submit`` entries and, with ``IORING_ENTER_GETEVENTS``, let the kernel
        move overflowed completions into the ring."""
        return self._syscall(
            _SYS_ENTER,
            ctypes.c_int(self._fd),
            ctypes.c_uint(to_submit),
            ctypes.c_uint(0),
            ctypes.c_uint(flags),
            None,
            ctypes.c_size_t(0),
        )

    def _cq_overflowed(self) -> bool:
        """The kernel's flag: completions wait on its overflow list."""
        return bool(_U32.unpack_from(self._ring, self._sq_flags)[0] & _SQ_CQ_OVERFLOW)

    def _reap(self, user_data: int) -> int | None:
        ring = self._ring
        head = _U32.unpack_from(ring, self._cq_head)[0]
        tail = _U32.unpack_from(ring, self._cq_tail)[0]
        found = None
        while head != tail:
            got, res, _flags = _CQE.unpack_from(
                ring, self._cqes + _CQE.size * (head & self._cq_mask)
            )
            if got == user_data:
                found = res
            head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(ring, self._cq_head, head)
        return found


def open_ring(*, enabled: bool | None = None) -> DurableRing | None:
    """A ring for durable appends, or None where the store must keep its worker thread.

    ``enabled=None`` follows ``MICROTRIO_IO_URING`` (on unless it is 0); True tries
    whatever the environment says (tests); False returns None."""
    if enabled is None:
        enabled = _enabled_by_env()
    if not enabled or not _supported_platform():
        return None
    try:
        syscall = _Syscalls()
        params = (ctypes.c_char * 120)()
        ring_fd = syscall(_SYS_SETUP, ctypes.c_uint(_ENTRIES), ctypes.byref(params))
    except (OSError, AttributeError) as exc:
        logger.debug("io_uring is not available (%s): log appends use a worker thread", exc)
        return None
    raw = bytes(params)
    features = struct.unpack_from("=I", raw, 20)[0]
    if features & (_FEAT_SINGLE_MMAP | _FEAT_RW_CUR_POS) != _FEAT_SINGLE_MMAP | _FEAT_RW_CUR_POS:
        os.close(ring_fd)
        logger.debug(
            "io_uring is too old (features %#x): log appends use a worker thread", features
        )
        return None
    try:
        return DurableRing(syscall, ring_fd, raw)  # closes ring_fd itself if it fails
    except (OSError, ValueError) as exc:
        logger.debug("io_uring setup failed (%s): log appends use a worker thread", exc)
        return None
