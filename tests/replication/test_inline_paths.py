"""The write path's short-cuts that skip a worker-thread hop: a commit-only hard state is
written on the event loop, small row-change entries are applied on the event loop (schema
statements and large entries still in the thread), and WAL checkpoints run every
CHECKPOINT_PAGES pages instead of inside a commit: their bulk in the background, the rest on
the writer connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import checksums, open_cluster

from microtrio._db import _apply
from microtrio._db._apply import INLINE_APPLY_BYTES
from microtrio._db._database import Database
from microtrio._replication import LogStore
from microtrio._replication._storage import AsyncLogStore
from microtrio.raft import Entry, EntryType, HardState

CEILING = 90.0


async def test_commit_only_hard_state_is_written_inline(tmp_path: Path) -> None:
    store = AsyncLogStore(LogStore(tmp_path / "raft"))
    await store.load()
    await store.persist(HardState(1, 7, 0), [Entry(1, 1, EntryType.NORMAL, b"x")], None)
    await store.persist(HardState(1, 7, 0), [Entry(1, 2, EntryType.NORMAL, b"y")], None)
    assert store.persist_inline(HardState(1, 7, 2))  # commit only: no thread, no sync
    assert not store.persist_inline(HardState(2, 0, 2))  # a new term needs the fsync path
    assert not store.persist_inline(HardState(1, 9, 2))  # so does a new vote
    await store.aclose()
    reopened = LogStore(tmp_path / "raft")
    assert reopened.load().hard_state == HardState(1, 7, 2)  # the inline write is read back
    reopened.close()


async def test_small_entries_apply_inline_schema_and_large_ones_in_the_thread(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            # the leader commits the transactions it ran (held commits); the followers apply
            appliers = [m.db.applier for m in cluster.running() if m is not leader]
            held = leader.db.applier.held_commits
            threads = [a.thread_applies for a in appliers]
            await leader.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            await cluster.wait_applied(leader.db.applied_index)
            # the schema statement went through the thread on every follower
            assert all(a.thread_applies > t for a, t in zip(appliers, threads, strict=True))
            inline = [a.inline_applies for a in appliers]
            threads = [a.thread_applies for a in appliers]
            for k in range(20):
                await leader.db.execute("INSERT INTO t VALUES (?, ?)", (k, b"v" * 100))
            await leader.db.execute("INSERT INTO t VALUES (?, ?)", (99, b"L" * INLINE_APPLY_BYTES))
            await cluster.wait_applied(leader.db.applied_index)
            for a, i, t in zip(appliers, inline, threads, strict=True):
                assert a.inline_applies >= i + 20
                assert a.thread_applies >= t + 1  # the large entry
            assert leader.db.applier.held_commits >= held + 22
            sums = [await checksums(m) for m in cluster.running()]
            assert sums[0] == sums[1] == sums[2]


#: Checkpoints every 1000 pages in these tests (4000 would take four times the writes).
PAGES = 1000


async def _write_pages(tmp_path: Path, pages: int) -> list[tuple[Database, int]]:
    """Write about ``pages`` pages of 4 KiB through a 3-member cluster in entries small
    enough to be applied inline; each member's database and its WAL file's size in pages."""
    async with open_cluster(tmp_path, 3) as cluster:
        leader = await cluster.leader()
        await leader.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        blob = b"w" * 30_000
        for k in range(pages * 4096 // len(blob)):
            await leader.db.execute("INSERT INTO t VALUES (?, ?)", (k, blob))
        await cluster.wait_applied(leader.db.applied_index)
        found = []
        for member in cluster.running():
            applier = member.db.applier
            assert applier.inline_applies + applier.held_commits > PAGES // 10
            wal = member.db_path.with_name(member.db_path.name + "-wal")
            found.append((member.db, wal.stat().st_size // 4096))
        return found


async def test_wal_is_checkpointed_outside_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_apply, "CHECKPOINT_PAGES", PAGES)
    with trio.fail_after(CEILING):
        found = await _write_pages(tmp_path, PAGES * 5 // 2)
    for db, wal_pages in found:
        stats = db.statistics()
        # the bulk of each checkpoint in the background, the rest finished by the writer
        assert stats.background_checkpoints >= 2
        assert stats.writer_checkpoints >= 2
        # without checkpoints the WAL would hold every page written (no auto-checkpoint
        # any more); with them it is restarted and stays small
        assert wal_pages < 2 * PAGES


async def test_the_wal_stays_bounded_without_background_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the background checkpointer fall behind (here it never runs), the writer
    connection checkpoints a WAL of WAL_LIMIT_PAGES itself."""

    async def stalled(self: Database, conn: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(_apply, "CHECKPOINT_PAGES", PAGES // 2)
    monkeypatch.setattr(_apply, "WAL_LIMIT_PAGES", PAGES)
    monkeypatch.setattr(Database, "_checkpoint_loop", stalled)
    with trio.fail_after(CEILING):
        found = await _write_pages(tmp_path, PAGES * 5 // 2)
    for db, wal_pages in found:
        stats = db.statistics()
        assert stats.background_checkpoints == 0
        assert stats.writer_checkpoints >= 2
        assert wal_pages < PAGES + PAGES // 2


async def test_inline_applies_let_other_tasks_run(tmp_path: Path) -> None:
    """A long run of small entries applied on the event loop yields every
    APPLY_YIELD_EVERY entries (a catch-up must not hold heartbeats and the transport back
    until it is done), and not for each one (a free lock is taken without a pass)."""
    from microtrio._db import Database, ExtensionRegistry
    from microtrio._db._apply import APPLY_YIELD_EVERY
    from microtrio._db._capture import execute_batch
    from microtrio._db._payload import encode_batch

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            db = Database(tmp_path / "db.bin", extensions=ExtensionRegistry())
            await nursery.start(db.run)
            await db.open(bootstrap=True)
            await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            applier = db.applier
            applier.enable_inline_apply()
            conn = applier._conn
            _, batch = execute_batch(conn, [lambda c: c.execute("INSERT INTO t VALUES (1)")])
            ticks = 0
            done = False

            async def other() -> None:
                nonlocal ticks
                while not done:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            start = applier.applied_index
            before = applier.inline_applies
            seen = ticks
            # one entry with a row change, then 199 that only advance the index (no-ops)
            await applier.apply(start + 1, encode_batch(batch))
            for k in range(1, 200):
                await applier.apply(start + 1 + k, None)
            done = True
            assert applier.inline_applies - before == 200
            # the other task ran between the entries, about every APPLY_YIELD_EVERY of them
            # (the count left over from earlier applies shifts the first yield; the last
            # stretch ends without one), and not after each entry (that gave 200)
            assert 200 // APPLY_YIELD_EVERY - 2 <= ticks - seen < 100
            await db.close()
