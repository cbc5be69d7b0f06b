"""Hand-offs on the write path that take no scheduler pass: a lone inline apply does not
give other tasks a turn (a run of back-to-back entries still does, see
test_inline_paths.py), and a write request is queued for the writer without one, except
that a caller already cancelled queues nothing."""

from __future__ import annotations

from pathlib import Path

import trio

from microtrio._db import Database, ExtensionRegistry
from microtrio._db._apply import APPLY_BURST_GAP
from microtrio._db._capture import execute_batch
from microtrio._db._payload import encode_batch

CEILING = 60.0


async def test_lone_inline_apply_takes_no_scheduler_pass(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            db = Database(tmp_path / "db.bin", extensions=ExtensionRegistry())
            await nursery.start(db.run)
            await db.open(bootstrap=True)
            await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            applier = db.applier
            applier.enable_inline_apply()
            _, batch = execute_batch(
                applier._conn, [lambda c: c.execute("INSERT INTO t VALUES (1)")]
            )
            turns = 0
            other_scope = trio.CancelScope()

            async def other() -> None:
                nonlocal turns
                with other_scope:
                    while True:
                        turns += 1
                        await trio.lowlevel.checkpoint()

            # the last apply (CREATE TABLE) ends well before the next starts: a lone entry
            await trio.sleep(100 * APPLY_BURST_GAP)
            nursery.start_soon(other)
            while not turns:  # until the other task runs
                await trio.lowlevel.checkpoint()
            seen = turns
            start = applier.applied_index
            await applier.apply(start + 1, encode_batch(batch))
            assert applier.applied_index == start + 1
            assert turns == seen  # applied without letting the other task run
            for k in range(2, 12):  # back to back: each lets the other task run first
                await applier.apply(start + k, None)
            assert applier.applied_index == start + 11
            assert turns - seen >= 5
            other_scope.cancel()
            assert await db.read(lambda c: c.execute("SELECT k FROM t").fetchall()) == [(1,)]
            await db.close()


async def test_cancelled_caller_queues_no_write(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            db = Database(tmp_path / "db.bin", extensions=ExtensionRegistry())
            await nursery.start(db.run)
            await db.open(bootstrap=True)
            await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            applied = db.applied_index
            with trio.CancelScope() as scope:
                scope.cancel()
                await db.execute("INSERT INTO t VALUES (1)")
            assert scope.cancelled_caught
            await db.execute("INSERT INTO t VALUES (2)")  # the writer takes the next one
            assert db.applied_index == applied + 1  # only the second write was committed
            assert await db.read(lambda c: c.execute("SELECT k FROM t").fetchall()) == [(2,)]
            await db.close()
