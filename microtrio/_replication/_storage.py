"""Trio facade over the durable Raft storage (issue 4): :class:`AsyncLogStore`.

The blocking store, its directory layout and its crash-safety rules are in ``_logstore.py``;
the file formats are in ``_segments.py`` and ``_snapshots.py``. This module runs the blocking
calls in a worker thread, one at a time (one ``CapacityLimiter(1)`` per store), and
re-exports the names other layers use. The hot path, a small append that extends the newest
segment, can skip the thread: one io_uring write with ``RWF_DSYNC`` from the event loop
(``_uring.py``; on unless ``MICROTRIO_IO_URING=0``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar, final

import trio

from .._nowait import take
from ..raft import Entry, HardState, PersistedState, Snapshot
from ._logstore import DEFAULT_SEGMENT_SIZE, LogStore, LogStoreStatistics, PendingAppend
from ._uring import UNSUPPORTED_ERRNOS, DurableRing, open_ring

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "AsyncLogStore",
    "LogStore",
    "LogStoreStatistics",
    "open_log_store",
]

_T = TypeVar("_T")

logger = logging.getLogger("microtrio.replication.storage")

# Appends up to this many bytes of entry data go through the io_uring (encoded and
# checksummed on the event loop); bigger ones are encoded in the worker thread.
RING_MAX_BYTES = 256 << 10


@final
class AsyncLogStore:
    """Trio facade over :class:`LogStore`: each call runs in a worker thread, one at a time.

    Calls are not abandoned on cancellation: a write that has started finishes (its outcome
    is then unknown to the cancelled caller, as with any interrupted fsync).

    :meth:`load` also opens an io_uring for the hot path (see :meth:`persist`) when it is
    asked for and the kernel allows one: ``ring=None`` follows ``MICROTRIO_IO_URING``
    (on unless it is 0, see ``_uring.py``), True asks for one, False never.
    """

    def __init__(self, store: LogStore, *, ring: bool | None = None) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(1)
        self._want_ring = ring
        self._ring: DurableRing | None = None

    @property
    def ring_writes(self) -> int | None:
        """Appends made durable through the io_uring; None when it is not in use."""
        return None if self._ring is None else self._ring.writes

    @property
    def sync_store(self) -> LogStore:
        return self._store

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def load(self) -> PersistedState:
        state = await self._run(self._store.load)
        if self._want_ring is not False and self._ring is None:
            self._ring = open_ring(enabled=self._want_ring)
        return state

    async def append(self, entries: Sequence[Entry]) -> None:
        await self._run(partial(self._store.append, entries))

    async def truncate_from(self, index: int) -> None:
        await self._run(partial(self._store.truncate_from, index))

    async def save_hard_state(self, hard_state: HardState) -> None:
        await self._run(partial(self._store.save_hard_state, hard_state))

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._run(partial(self._store.save_snapshot, snapshot))

    async def install_snapshot(self, snapshot: Snapshot) -> None:
        await self._run(partial(self._store.install_snapshot, snapshot))

    async def compact_to(self, index: int) -> None:
        await self._run(partial(self._store.compact_to, index))

    async def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """Persist one Ready (``LogStore.persist``). Entries that extend the newest segment,
        with no snapshot and no new term or vote, go through the io_uring when there is
        one: written and made durable by the kernel while the event loop goes on, then the
        commit hint is rewritten here (no sync). Anything else runs in the worker thread."""
        store, ring = self._store, self._ring
        if (
            ring is not None
            and entries
            and snapshot is None
            and store.commit_only(hard_state)
            and sum(len(e.data) for e in entries) <= RING_MAX_BYTES
        ):
            # a free limiter without a scheduler pass (the ring's wait is the checkpoint);
            # cancelled before it starts, nothing is written
            await trio.lowlevel.checkpoint_if_cancelled()
            await take(self._limiter)
            try:
                pending = store.prepare_append(entries)
                if pending is not None and await self._write_through_ring(ring, pending):
                    store.persist(hard_state, (), None)  # the commit hint at most
                    return
            finally:
                self._limiter.release()
        await self._run(partial(store.persist, hard_state, entries, snapshot))

    async def _write_through_ring(self, ring: DurableRing, pending: PendingAppend) -> bool:
        """Make a prepared append durable; False (nothing written) if the kernel refused the
        operation itself, after which this store uses its worker thread for good."""
        try:
            await ring.write(pending.fd, pending.data, pending.offset)
        except OSError as exc:
            if exc.errno in UNSUPPORTED_ERRNOS and ring.writes == 0:
                logger.warning(
                    "%s: io_uring refused a log append (%s); using a worker thread",
                    self._store.directory,
                    exc,
                )
                self._close_ring()
                return False
            raise self._store.append_failed(exc) from exc
        self._store.append_written(pending)
        return True

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def persist_inline(self, hard_state: HardState | None) -> bool:
        """Persist a Ready that changes nothing but the commit index without a thread hop:
        when no entries or snapshot come with it, the term and vote stay, and no other call
        is running, the commit hint is rewritten here (a 16-byte write into the page cache,
        no sync: see ``_logstore.py``). Returns False when the caller must :meth:`persist`."""
        store = self._store
        if not store.commit_only(hard_state):
            return False
        try:
            self._limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            return False
        try:
            if hard_state is not None:
                store.persist(hard_state, (), None)
        finally:
            self._limiter.release_on_behalf_of(self)
        return True

    async def load_snapshot(self) -> Snapshot | None:
        return await self._run(self._store.load_snapshot)

    def statistics(self) -> LogStoreStatistics:
        return self._store.statistics()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._limiter:  # an append through the ring has finished
                self._close_ring()
            await self._run(self._store.close)


@asynccontextmanager
async def open_log_store(
    directory: str | os.PathLike[str],
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    name: str = "",
) -> AsyncIterator[AsyncLogStore]:
    """Own a store for the block; call ``await store.load()`` first. Closed on exit."""
    store = AsyncLogStore(LogStore(directory, segment_size=segment_size, name=name))
    try:
        yield store
    finally:
        await store.aclose()
