"""The io_uring path of the log store: same files, same errors, same guarantees as the thread."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from microtrio import StateError
from microtrio._replication import _uring
from microtrio._replication._storage import RING_MAX_BYTES, AsyncLogStore, LogStore
from microtrio.raft import Entry, EntryType, HardState

SMALL = 256  # a new segment every few entries

RING = _uring.open_ring(enabled=True)
needs_ring = pytest.mark.skipif(
    RING is None, reason="io_uring is not available here (not x86-64 Linux 5.6+, or refused)"
)
if RING is not None:
    RING.close()


def entries(start: int, count: int, term: int = 1, size: int = 40) -> list[Entry]:
    return [
        Entry(
            term=term, index=i, type=EntryType.NORMAL, data=f"{i}:{term}".encode().ljust(size, b".")
        )
        for i in range(start, start + count)
    ]


async def fill(
    store: AsyncLogStore, count: int, *, batch: int = 1, term: int = 1, max_commit: int = 1 << 60
) -> None:
    """Append ``count`` entries ``batch`` at a time, advancing the commit index (up to
    ``max_commit``) as a leader would: commit-only hard-state changes, the ring's case."""
    await store.persist(HardState(term, 1, 0), (), None)
    index = store.statistics().last_index + 1
    end = index + count
    while index < end:
        n = min(batch, end - index)
        commit = min(index - 1, max_commit)
        await store.persist(HardState(term, 1, commit), entries(index, n, term), None)
        index += n


def reload(directory: Path) -> list[Entry]:
    store = LogStore(directory)
    try:
        return list(store.load().entries)
    finally:
        store.close()


@needs_ring
async def test_ring_appends_read_back_like_thread_appends(tmp_path: Path) -> None:
    with trio.fail_after(60):
        for name, ring in (("ring", True), ("thread", False)):
            store = AsyncLogStore(LogStore(tmp_path / name, segment_size=SMALL * 8), ring=ring)
            await store.load()
            await fill(store, 30, batch=3)
            writes = store.ring_writes
            await store.aclose()
            if ring:
                assert writes is not None and writes > 0  # the ring did the appends
            else:
                assert writes is None
    ring_log, thread_log = reload(tmp_path / "ring"), reload(tmp_path / "thread")
    assert [e.index for e in ring_log] == list(range(1, 31))
    assert ring_log == thread_log
    # byte for byte the same files: one format whichever path wrote it
    names = sorted(p.name for p in (tmp_path / "ring").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "thread").iterdir())
    for name in names:
        if name.endswith(".seg"):
            assert (tmp_path / "ring" / name).read_bytes() == (
                tmp_path / "thread" / name
            ).read_bytes()


@needs_ring
async def test_new_segments_and_truncation_take_the_thread_and_the_ring_goes_on(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        store = AsyncLogStore(LogStore(tmp_path, segment_size=SMALL), ring=True)
        await store.load()
        await fill(store, 20, max_commit=10)  # SMALL segments: several roll-overs on the way
        assert store.statistics().segments > 2
        before = store.ring_writes
        assert before is not None and 0 < before < 20  # roll-overs went to the thread
        # a conflicting suffix (a new leader's entries at 15) is truncated in the thread
        await store.persist(HardState(2, 2, 10), entries(15, 2, term=2), None)
        assert store.ring_writes == before
        for index in (17, 18, 19):  # one may start a segment (thread), not all
            await store.persist(HardState(2, 2, 12), entries(index, 1, term=2), None)
        assert store.ring_writes > before  # plain appends use the ring again
        await store.aclose()
    log = reload(tmp_path)
    assert [(e.index, e.term) for e in log][-6:] == [
        (14, 1),
        (15, 2),
        (16, 2),
        (17, 2),
        (18, 2),
        (19, 2),
    ]


@needs_ring
async def test_term_changes_big_batches_and_snapshots_stay_in_the_thread(tmp_path: Path) -> None:
    with trio.fail_after(60):
        store = AsyncLogStore(LogStore(tmp_path), ring=True)
        await store.load()
        await fill(store, 3)
        base = store.ring_writes
        await store.persist(HardState(2, 1, 3), entries(4, 1, term=2), None)  # new term
        big = RING_MAX_BYTES // 1000 + 1
        await store.persist(HardState(2, 1, 4), entries(5, big, term=2, size=1000), None)
        assert store.ring_writes == base
        await store.aclose()
    assert reload(tmp_path)[-1].index == 4 + big
    assert LogStore(tmp_path).load().hard_state.term == 2


async def test_on_unless_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        monkeypatch.delenv(_uring.ENV_VAR, raising=False)
        store = AsyncLogStore(LogStore(tmp_path / "default"))
        await store.load()
        await fill(store, 2)
        # the ring where the kernel gives one, else the worker thread
        assert (store.ring_writes is not None) == (RING is not None)
        await store.aclose()
        for value in ("0", "off"):
            monkeypatch.setenv(_uring.ENV_VAR, value)
            assert _uring.open_ring() is None
            store = AsyncLogStore(LogStore(tmp_path / f"env-{value}"))
            await store.load()
            await fill(store, 2)
            assert store.ring_writes is None
            await store.aclose()
        monkeypatch.delenv(_uring.ENV_VAR)
        store = AsyncLogStore(LogStore(tmp_path / "arg"), ring=False)
        await store.load()
        await fill(store, 2)
        assert store.ring_writes is None
        await store.aclose()


def hide_completions_until_flushed(ring: _uring.DurableRing) -> list[int]:
    """Make the ring look as if the kernel had put its completions on the overflow list:
    reaping finds nothing until an ``io_uring_enter`` with GETEVENTS (the flush). Returns
    the flags of every ``io_uring_enter``."""
    real_reap, real_enter = ring._reap, ring._enter
    entered: list[int] = []

    def reap(user_data: int) -> int | None:
        if _uring._ENTER_GETEVENTS not in entered:
            return None
        return real_reap(user_data)

    def enter(to_submit: int, flags: int) -> int:
        entered.append(flags)
        return real_enter(to_submit, flags)

    ring._reap = reap  # type: ignore[method-assign]
    ring._enter = enter  # type: ignore[method-assign]
    return entered


async def check_a_hidden_completion_is_flushed_in(
    tmp_path: Path, flag: Callable[[_uring.DurableRing], Callable[[], bool]]
) -> None:
    """Append entry 3 through a ring whose completion stays hidden until the kernel's
    overflow list is flushed (``flag(ring)`` stands in for the kernel's overflow flag):
    the submission, then one flush, and the entry is on disk."""
    with trio.fail_after(30):
        store = AsyncLogStore(LogStore(tmp_path), ring=True)
        await store.load()
        await fill(store, 2)
        ring = store._ring
        assert ring is not None
        entered = hide_completions_until_flushed(ring)
        ring._cq_overflowed = flag(ring)  # type: ignore[method-assign]
        await store.persist(HardState(1, 1, 2), entries(3, 1), None)
        assert entered == [0, _uring._ENTER_GETEVENTS]  # the submission, then the flush
        assert ring.overflow_flushes == 1
        await store.aclose()
    assert [e.index for e in reload(tmp_path)] == [1, 2, 3]


@needs_ring
async def test_a_completion_missing_from_the_ring_is_flushed_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completion the ring does not show and the kernel does not flag: the write wakes
    on its own after a slice, flushes the overflow list and finds it (never waits for good)."""
    monkeypatch.setattr(_uring, "_WAIT_SLICE", 0.05)
    await check_a_hidden_completion_is_flushed_in(tmp_path, lambda ring: lambda: False)


@needs_ring
async def test_a_flagged_overflow_is_flushed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the kernel flags completions on its overflow list, the write flushes the list
    as soon as it finds nothing in the ring, without waiting for a slice to run out."""
    monkeypatch.setattr(_uring, "_WAIT_SLICE", 3600.0)  # a wait for the slice would hang

    def posted(ring: _uring.DurableRing) -> Callable[[], bool]:
        def flag() -> bool:  # the kernel has the completion ("on its overflow list")
            head: int = _uring._U32.unpack_from(ring._ring, ring._cq_head)[0]
            tail: int = _uring._U32.unpack_from(ring._ring, ring._cq_tail)[0]
            return head != tail

        return flag

    await check_a_hidden_completion_is_flushed_in(tmp_path, posted)


class _FailingRing:
    """Stands in for the ring: fails every write with ``err`` (nothing written)."""

    def __init__(self, err: int) -> None:
        self.err = err
        self.writes = 0
        self.closed = False

    async def write(self, fd: int, data: bytes, offset: int) -> None:
        await trio.lowlevel.checkpoint()
        raise OSError(self.err, os.strerror(self.err))

    def close(self) -> None:
        self.closed = True


async def test_a_failed_ring_write_makes_the_store_unusable(tmp_path: Path) -> None:
    with trio.fail_after(30):
        store = AsyncLogStore(LogStore(tmp_path), ring=False)
        await store.load()
        await fill(store, 2)
        store._ring = _FailingRing(errno.EIO)  # type: ignore[assignment]
        with pytest.raises(StateError, match="append failed"):
            await store.persist(HardState(1, 1, 2), entries(3, 1), None)
        with pytest.raises(StateError, match="unusable after a failed append"):
            await store.persist(HardState(1, 1, 2), entries(3, 1), None)
        await store.aclose()
    assert [e.index for e in reload(tmp_path)] == [1, 2]  # nothing half-recorded


async def test_an_operation_the_kernel_refuses_falls_back_to_the_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        store = AsyncLogStore(LogStore(tmp_path), ring=False)
        await store.load()
        await fill(store, 2)
        fake = _FailingRing(errno.EINVAL)
        store._ring = fake  # type: ignore[assignment]
        await store.persist(HardState(1, 1, 2), entries(3, 2), None)
        assert fake.closed and store.ring_writes is None  # the thread from now on
        await store.persist(HardState(1, 1, 4), entries(5, 1), None)
        await store.aclose()
    assert "io_uring refused a log append" in caplog.text
    assert [e.index for e in reload(tmp_path)] == [1, 2, 3, 4, 5]


@needs_ring
async def test_a_cancelled_append_completes_once_submitted(tmp_path: Path) -> None:
    with trio.fail_after(30):
        store = AsyncLogStore(LogStore(tmp_path), ring=True)
        await store.load()
        await fill(store, 2)
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before it starts: nothing written
            await store.persist(HardState(1, 1, 2), entries(3, 1), None)
        assert store.statistics().last_index == 2
        scopes: list[trio.CancelScope] = []

        async def append() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await store.persist(HardState(1, 1, 2), entries(3, 1), None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            await trio.testing.wait_all_tasks_blocked()  # waiting for the kernel
            scopes[0].cancel()
        # the write was waited for however the caller was cancelled, and recorded
        assert store.statistics().last_index == 3
        await store.persist(HardState(1, 1, 3), entries(4, 1), None)
        await store.aclose()
    assert [e.index for e in reload(tmp_path)] == [1, 2, 3, 4]


@needs_ring
async def test_ring_errors_are_plain_os_errors() -> None:
    with trio.fail_after(30):
        ring = _uring.open_ring(enabled=True)
        assert ring is not None
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as info:
                await ring.write(r, b"data", 0)  # the read end: not writable
            assert info.value.errno == errno.EBADF
        finally:
            os.close(r)
            os.close(w)
        ring.close()
        assert ring.closed
        with pytest.raises(OSError, match="closed"):
            await ring.write(1, b"x", 0)
        ring.close()  # idempotent
