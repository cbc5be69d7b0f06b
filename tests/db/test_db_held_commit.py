"""The member that ran a batch commits its open transaction as the entry, and falls back to
applying the entry like every other member whenever that would not give the same file."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import pytest
import trio
from _db_helpers import RecordingCommitter, open_recorded, start_db, table_checksums

from microtrio import OutcomeUnknownError
from microtrio._db import Applier, Database
from microtrio._db._payload import Op, OpKind, WriteBatch, encode_batch


async def _replay(path: Path, rec: RecordingCommitter) -> None:
    async with trio.open_nursery() as nursery:
        copy = await start_db(nursery, path)
        for index, payload in rec.entries:
            await copy.applier.apply(index, payload)
        await copy.close()


async def _held_write(
    nursery: trio.Nursery, db: Database, rec: RecordingCommitter, sql: str
) -> trio.Event:
    """Start ``sql`` as a write and return once its batch ran and waits at the committer's
    gate (its transaction held); the event is set when the write returned."""
    rec.gate = trio.Event()
    done = trio.Event()

    async def write() -> None:
        await db.execute(sql)
        done.set()

    nursery.start_soon(write)
    await rec.entered.wait()
    return done


def _open_gate(rec: RecordingCommitter) -> None:
    assert rec.gate is not None
    rec.gate.set()
    rec.gate = None


async def _rows(db: Database) -> list[tuple[int, str]]:
    return await db.read(lambda c: list(c.execute("SELECT k, v FROM kv ORDER BY k")), stale=True)


async def test_a_plain_batch_is_committed_as_run(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "a" / "microtrio.db")
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
            before = db.applier.held_commits
            for i in range(5):
                await db.execute("INSERT INTO kv (v) VALUES (? || random())", (str(i),))
            assert db.applier.held_commits == before + 5
            assert db.statistics().held_commits == db.applier.held_commits
            assert db.applied_index == rec.entries[-1][0]
            assert len(await _rows(db)) == 5
            await db.close()
        await _replay(tmp_path / "b" / "microtrio.db", rec)
    a = table_checksums(tmp_path / "a" / "microtrio.db")
    assert "kv" in a and a == table_checksums(tmp_path / "b" / "microtrio.db")


async def test_a_single_member_commits_held_batches_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a single member keeps synchronous=FULL: its commits sync, so they run in the thread
    threads: list[threading.Thread] = []
    real = Applier._commit_held

    def recording(self: Applier, index: int, term: int) -> object:
        threads.append(threading.current_thread())
        return real(self, index, term)

    monkeypatch.setattr(Applier, "_commit_held", recording)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db = await start_db(nursery, tmp_path / "microtrio.db")  # the local committer
            await db.open(bootstrap=True)
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
            await db.execute("INSERT INTO kv VALUES (1, 'x')")
            assert db.statistics().held_commits >= 2
            await db.close()
    assert len(threads) >= 2
    assert threading.main_thread() not in threads


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TEMP TABLE scratch (x)",  # would outlive the batch on the writer connection
        "ANALYZE",  # statistics are not replicated
        "UPDATE microtrio_applied SET term = term",  # bookkeeping is never captured
    ],
)
async def test_a_batch_with_local_effects_is_rolled_back(tmp_path: Path, statement: str) -> None:
    def txn(conn: apsw.Connection) -> None:
        conn.execute("INSERT INTO kv (v) VALUES ('x')")
        conn.execute(statement)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "a" / "microtrio.db")
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
            await db.execute("CREATE INDEX kv_v ON kv (v)")
            held, applied = db.applier.held_commits, db.applier.inline_applies
            await db.transaction(txn)
            await db.transaction(txn)  # CREATE TEMP TABLE again: the first one did not stay
            assert db.applier.held_commits == held
            assert db.applier.inline_applies == applied + 2
            assert await _rows(db) == [(1, "x"), (2, "x")]
            await db.close()
        await _replay(tmp_path / "b" / "microtrio.db", rec)
    a = table_checksums(tmp_path / "a" / "microtrio.db")
    assert "sqlite_stat1" not in a
    assert a == table_checksums(tmp_path / "b" / "microtrio.db")


async def test_a_snapshot_never_sees_a_held_batch(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
            held = db.applier.held_commits
            done = await _held_write(nursery, db, rec, "INSERT INTO kv VALUES (1, 'held')")
            snap = await db.snapshot()
            mem = apsw.Connection(":memory:")
            mem.deserialize("main", snap.data)
            assert mem.execute("SELECT count(*) FROM kv").get == 0
            mem.close()
            _open_gate(rec)
            await done.wait()
            # the snapshot rolled the transaction back: the entry was applied instead
            assert db.applier.held_commits == held
            assert await _rows(db) == [(1, "held")]
            await db.close()


async def test_a_failed_commit_leaves_nothing(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
            rec.fail_next = OutcomeUnknownError("lost")
            with pytest.raises(OutcomeUnknownError):
                await db.execute("INSERT INTO kv VALUES (1, 'unknown')")
            assert await _rows(db) == []
            # the writer connection is usable and holds nothing of the failed batch
            await db.execute("INSERT INTO kv VALUES (2, 'next')")
            assert await _rows(db) == [(2, "next")]
            await db.close()


async def test_an_entry_of_another_origin_first_makes_the_batch_run_again(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
            held = db.applier.held_commits
            ours = "INSERT INTO kv VALUES (1, 'ours') ON CONFLICT DO NOTHING"
            done = await _held_write(nursery, db, rec, ours)
            # e.g. a former leader's entry, committed before ours: it takes key 1
            index = db.applied_index + 1
            await db.applier.apply(
                index,
                encode_batch(
                    WriteBatch(
                        db.applier.changed_index,
                        (Op(OpKind.SQL, b"INSERT INTO kv VALUES (1, 'theirs')"),),
                    )
                ),
            )
            _open_gate(rec)
            await done.wait()
            # ours was refused as stale, ran again on the new state and changed nothing
            assert await _rows(db) == [(1, "theirs")]
            assert db.applier.was_refused(index + 1)
            assert db.applier.held_commits == held
            await db.close()
