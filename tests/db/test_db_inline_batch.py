"""Write batches of statements run on the event loop (no thread hand-off) under a step
budget; a batch that needs more, or meets a lock, runs again in a worker thread with the
same result; Python transaction functions always run in a worker thread."""

from __future__ import annotations

import threading

import apsw
import trio

from microtrio._db import Database

_BIG = (
    "INSERT INTO t (n, thread) SELECT count(*), thread_id() FROM "
    "(WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 100000) "
    "SELECT x FROM r)"
)


def _setup(db: Database) -> None:
    conn = db._conn  # the writer connection: where batches run
    assert conn is not None
    conn.create_scalar_function("thread_id", threading.get_ident, 0)


async def _rows(db: Database) -> list[tuple[int, int]]:
    rows = await db.read(lambda conn: conn.execute("SELECT n, thread FROM t ORDER BY rowid"))
    return [(int(n), int(thread)) for n, thread in rows]


async def test_a_small_statement_batch_runs_on_the_event_loop(db: Database) -> None:
    _setup(db)
    loop_thread = threading.get_ident()
    with trio.fail_after(20):
        await db.execute("CREATE TABLE t (n INTEGER, thread INTEGER)")
        before = db.statistics().inline_batches
        result = await db.execute("INSERT INTO t VALUES (?, thread_id())", (7,))
        assert result.rows_affected == 1
        assert await _rows(db) == [(7, loop_thread)]
    assert db.statistics().inline_batches == before + 1


async def test_a_batch_over_the_step_budget_runs_again_in_a_thread(db: Database) -> None:
    _setup(db)
    loop_thread = threading.get_ident()
    with trio.fail_after(30):
        await db.execute("CREATE TABLE t (n INTEGER, thread INTEGER)")
        before = db.statistics().inline_batches
        result = await db.execute(_BIG)
        assert result.rows_affected == 1
        rows = await _rows(db)
    # the whole statement ran once more in a worker thread: one row, the full count
    assert len(rows) == 1 and rows[0][0] == 100000 and rows[0][1] != loop_thread
    assert db.statistics().inline_batches == before
    # the writer is usable on the loop again (no progress handler or busy timeout left)
    with trio.fail_after(20):
        await db.execute("INSERT INTO t VALUES (1, thread_id())")
        assert (await _rows(db))[-1] == (1, loop_thread)


async def test_a_statement_that_meets_a_lock_waits_for_it_in_a_thread(db: Database) -> None:
    _setup(db)
    loop_thread = threading.get_ident()
    calls: list[int] = []

    def busy_on_the_loop() -> int:
        calls.append(threading.get_ident())
        if threading.get_ident() == loop_thread:
            raise apsw.BusyError("database is locked")
        return threading.get_ident()

    conn = db._conn
    assert conn is not None
    conn.create_scalar_function("busy_on_the_loop", busy_on_the_loop, 0)
    with trio.fail_after(20):
        await db.execute("CREATE TABLE t (n INTEGER, thread INTEGER)")
        await db.execute("INSERT INTO t VALUES (3, busy_on_the_loop())")
        rows = await _rows(db)
    assert calls[0] == loop_thread and calls[-1] != loop_thread
    assert rows == [(3, calls[-1])]


async def test_python_transactions_never_run_on_the_event_loop(db: Database) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def txn(conn: apsw.Connection) -> None:
        seen.append(threading.get_ident())
        conn.execute("INSERT INTO t VALUES (1, 0)")

    with trio.fail_after(20):
        await db.execute("CREATE TABLE t (n INTEGER, thread INTEGER)")
        before = db.statistics().inline_batches
        await db.transaction(txn)
    assert seen and seen[0] != loop_thread
    assert db.statistics().inline_batches == before
