"""``Database.read(..., inline=True)``: the read runs on the event loop's thread, sees the
same state as a read in a worker thread, and falls back to a worker thread when SQLite
reports the database busy."""

from __future__ import annotations

import threading

import apsw
import trio

from microtrio._db import Database


async def test_inline_read_runs_on_the_event_loop_and_agrees(db: Database) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def count(conn: apsw.Connection) -> int:
        seen.append(threading.get_ident())
        return int(conn.execute("SELECT count(*) FROM schemas").get)

    with trio.fail_after(10):
        threaded = await db.read(count)
        inline = await db.read(count, inline=True)
        stale_inline = await db.read(count, stale=True, inline=True)
    assert threaded == inline == stale_inline > 0
    assert seen[0] != loop_thread
    assert seen[1:] == [loop_thread, loop_thread]


async def test_inline_read_that_finds_the_database_busy_moves_to_a_thread(db: Database) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def busy_on_the_loop(conn: apsw.Connection) -> str:
        threads.append(threading.get_ident())
        if threading.get_ident() == loop_thread:
            raise apsw.BusyError("database is locked")
        return "from a worker"

    with trio.fail_after(10):
        assert await db.read(busy_on_the_loop, inline=True) == "from a worker"
        # the reader connection is back in the pool and waits for locks again
        assert await db.read(lambda conn: conn.execute("SELECT 1").get) == 1
    assert threads[0] == loop_thread and threads[1] != loop_thread
