"""Trio facade over the durable Raft storage (issue 4): :class:`AsyncLogStore`.

The blocking store, its directory layout and its crash-safety rules are in ``_logstore.py``;
the file formats are in ``_segments.py`` and ``_snapshots.py``. This module runs the blocking
calls in a worker thread, one at a time (one ``CapacityLimiter(1)`` per store), and
re-exports the names other layers use.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar, final

import trio

from ..raft import Entry, HardState, PersistedState, Snapshot
from ._logstore import DEFAULT_SEGMENT_SIZE, LogStore, LogStoreStatistics

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "AsyncLogStore",
    "LogStore",
    "LogStoreStatistics",
    "open_log_store",
]

_T = TypeVar("_T")


@final
class AsyncLogStore:
    """Trio facade over :class:`LogStore`: each call runs in a worker thread, one at a time.

    Calls are not abandoned on cancellation: a write that has started finishes (its outcome
    is then unknown to the cancelled caller, as with any interrupted fsync).
    """

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(1)

    @property
    def sync_store(self) -> LogStore:
        return self._store

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def load(self) -> PersistedState:
        return await self._run(self._store.load)

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
        await self._run(partial(self._store.persist, hard_state, entries, snapshot))

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
