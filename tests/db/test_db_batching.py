"""Group commit: batches, per-transaction savepoints, commit failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing
from _db_helpers import open_recorded, start_db

from microtrio import ConflictError, MicrotrioError, OutcomeUnknownError
from microtrio._db import Applier, Database
from microtrio._db._capture import execute_batch
from microtrio._db._payload import OpKind, decode_batch, encode_batch

CREATE = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)"


def insert(key: str, value: int = 0) -> Callable[[apsw.Connection], str]:
    def fn(conn: apsw.Connection) -> str:
        conn.execute("INSERT INTO kv VALUES (?, ?)", (key, value))
        return key

    return fn


async def test_failing_transaction_in_batch_is_rolled_back_alone(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.transaction(lambda c: c.execute(CREATE))
            rec.gate = trio.Event()
            results: dict[str, object] = {}

            async def run(name: str, key: str) -> None:
                try:
                    results[name] = await db.transaction(insert(key))
                except ConflictError as exc:
                    results[name] = exc

            async with trio.open_nursery() as clients:
                clients.start_soon(run, "first", "a")
                await rec.entered.wait()  # batch 1 is being committed
                clients.start_soon(run, "second", "b")
                await trio.testing.wait_all_tasks_blocked()
                clients.start_soon(run, "third", "b")  # conflicts with "second" only
                await trio.testing.wait_all_tasks_blocked()
                entries = len(rec.entries)
                rec.gate.set()
            assert results["first"] == "a"
            assert results["second"] == "b"
            assert isinstance(results["third"], ConflictError)
            assert "UNIQUE constraint failed: kv.k" in str(results["third"])
            # second and third ran in one batch: two commits for three transactions
            assert len(rec.entries) == entries + 2
            ops = decode_batch(rec.entries[-1][1]).ops
            assert [op.kind for op in ops] == [OpKind.CHANGESET]
            rows = await db.read(lambda c: list(c.execute("SELECT k FROM kv ORDER BY k")))
            assert rows == [("a",), ("b",)]
            await db.close()


async def test_concurrent_writers_are_grouped(tmp_path: Path) -> None:
    n = 40
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.transaction(lambda c: c.execute(CREATE))
            before = db.statistics()
            async with trio.open_nursery() as clients:
                for i in range(n):
                    clients.start_soon(db.transaction, insert(f"k{i}", i))
            after = db.statistics()
            commits = after.commits - before.commits
            assert after.transactions - before.transactions == n
            assert 1 <= commits < n
            assert after.queued == 0
            assert len(rec.entries) == db.applied_index
            total = await db.read(lambda c: c.execute("SELECT count(*), sum(v) FROM kv").get)
            assert total == (n, sum(range(n)))
            await db.close()


async def test_commit_failure_reaches_every_caller(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.transaction(lambda c: c.execute(CREATE))
            rec.fail_next = OutcomeUnknownError("leadership lost")
            with pytest.raises(OutcomeUnknownError, match="leadership lost"):
                await db.transaction(insert("x"))
            assert await db.read(lambda c: c.execute("SELECT count(*) FROM kv").get) == 0
            # the next write goes through normally
            assert await db.transaction(insert("x")) == "x"
            await db.close()


async def test_read_only_transaction_does_not_commit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            entries = len(rec.entries)
            value = await db.transaction(lambda c: c.execute("SELECT 41 + 1").get)
            assert value == 42
            assert len(rec.entries) == entries
            await db.close()


async def test_close_fails_queued_writes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.transaction(lambda c: c.execute(CREATE))
            rec.gate = trio.Event()
            errors: list[Exception] = []

            async def run(key: str) -> None:
                try:
                    await db.transaction(insert(key))
                except Exception as exc:
                    errors.append(exc)

            async with trio.open_nursery() as clients:
                clients.start_soon(run, "a")
                await rec.entered.wait()
                clients.start_soon(run, "b")
                await trio.testing.wait_all_tasks_blocked()
                await db.close()
            assert len(errors) == 2
            assert {type(e).__name__ for e in errors} <= {
                "OutcomeUnknownError",
                "DatabaseNotOpenError",
            }


class RacingCommitter:
    """Before our first batch, an entry from elsewhere (another member) commits first."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.foreign: bytes | None = None
        self.barriers = 0

    async def commit(self, payload: bytes) -> int:
        if self.foreign is not None:
            foreign, self.foreign = self.foreign, None
            await self.applier.apply(self.applier.applied_index + 1, foreign)
        index = self.applier.applied_index + 1
        await self.applier.apply(index, payload)
        return index

    async def read_barrier(self) -> None:
        self.barriers += 1

    async def execute_remote(self, request: bytes) -> bytes | None:
        return None  # statement requests run locally

    def serve_remote(self, handler: object) -> None:
        return None


async def test_stale_batch_is_re_executed(tmp_path: Path) -> None:
    racers: list[RacingCommitter] = []

    def factory(applier: Applier) -> RacingCommitter:
        racers.append(RacingCommitter(applier))
        return racers[-1]

    def bump(conn: apsw.Connection) -> int:
        conn.execute("UPDATE counter SET n = n + 1")
        return int(conn.execute("SELECT n FROM counter").get)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db = await start_db(nursery, tmp_path / "microtrio.db", committer_factory=factory)
            await db.open(bootstrap=True)
            await db.transaction(
                lambda c: c.execute("CREATE TABLE counter (n); INSERT INTO counter VALUES (0)")
            )
            racer = racers[0]
            # the foreign entry: counter set to 10, executed on the current state
            racer.foreign = await capture(db, lambda c: c.execute("UPDATE counter SET n = 10"))
            commits = db.statistics().commits
            assert await db.transaction(bump) == 11  # re-executed after the foreign write
            assert db.statistics().commits == commits + 2
            assert racer.barriers >= 1
            assert await db.read(lambda c: c.execute("SELECT n FROM counter").get) == 11
            await db.close()


async def capture(db: Database, fn: Callable[[apsw.Connection], object]) -> bytes:
    """The payload ``fn`` would produce now, without committing it."""
    outcomes, batch = await db.applier.run_sync(
        lambda: execute_batch(db._conn, [fn])  # type: ignore[arg-type]
    )
    assert outcomes[0].error is None
    return encode_batch(batch)


async def test_cursors_left_in_progress_do_not_break_the_writer(tmp_path: Path) -> None:
    leaked: list[apsw.Cursor] = []

    def leak(conn: apsw.Connection) -> None:
        # a write statement stays in progress
        leaked.append(conn.execute("INSERT INTO kv VALUES ('x', 1), ('y', 2) RETURNING k"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, _rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.transaction(lambda c: c.execute(CREATE))
            await db.transaction(insert("a"))
            await db.transaction(insert("b"))
            # a returned cursor is drained into rows (INSERT ... RETURNING included)
            rows = await db.transaction(
                lambda c: c.execute("INSERT INTO kv VALUES ('c', 3) RETURNING k, v")
            )
            assert rows == [("c", 3)]
            assert await db.read(lambda c: c.execute("SELECT k FROM kv ORDER BY k")) == [
                ("a",),
                ("b",),
                ("c",),
            ]
            with pytest.raises(MicrotrioError, match="in progress|locked"):
                await db.transaction(leak)
            leaked.clear()
            assert await db.transaction(insert("d")) == "d"
            count = await db.read(lambda c: c.execute("SELECT count(*) FROM kv").get)
            assert count == 4
            await db.close()
