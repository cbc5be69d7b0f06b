"""Seeded random workloads: a database that only applies payloads matches the one that ran them."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
import trio
from _db_helpers import open_recorded, start_db, table_checksums

from microtrio import MicrotrioError

SETUP = """
CREATE TABLE a (k INTEGER PRIMARY KEY, v, note TEXT UNIQUE);
CREATE TABLE b (x, y);
CREATE TABLE c (id INTEGER PRIMARY KEY AUTOINCREMENT, a_k INTEGER REFERENCES a(k) ON DELETE CASCADE);
CREATE TRIGGER a_del AFTER DELETE ON a BEGIN INSERT INTO b VALUES ('deleted', old.k); END;
"""


class AppError(Exception):
    pass


def random_txn(rng: random.Random, serial: int) -> Callable[[apsw.Connection], None]:
    steps: list[tuple[str, tuple[object, ...]]] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["ins", "ins", "upd", "del", "b", "c", "ddl", "dup", "raise"])
        k = rng.randint(1, 30)
        if kind == "ins":
            steps.append(("INSERT OR REPLACE INTO a (k, v) VALUES (?, random())", (k,)))
        elif kind == "upd":
            steps.append(("UPDATE a SET v = datetime('now') || random() WHERE k % 5 = ?", (k % 5,)))
        elif kind == "del":
            steps.append(("DELETE FROM a WHERE k = ?", (k,)))
        elif kind == "b":
            steps.append(("INSERT INTO b VALUES (randomblob(4), ?)", (k,)))
        elif kind == "c":
            steps.append(("INSERT INTO c (a_k) SELECT k FROM a WHERE k >= ? LIMIT 1", (k,)))
        elif kind == "ddl":
            steps.append((f"CREATE TABLE IF NOT EXISTS extra_{k % 3} (z)", ()))
            steps.append((f"INSERT INTO extra_{k % 3} VALUES (random())", ()))
        elif kind == "dup":
            steps.append(("INSERT INTO a (k, note) VALUES (?, 'same')", (100 + serial,)))
        else:
            steps.append(("raise", ()))

    def fn(conn: apsw.Connection) -> None:
        for sql, args in steps:
            if sql == "raise":
                raise AppError
            conn.execute(sql, args)

    return fn


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_workload_replays_identically(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            leader, rec = await open_recorded(nursery, tmp_path / "a" / "microtrio.db")
            follower = await start_db(nursery, tmp_path / "b" / "microtrio.db")
            await leader.transaction(lambda conn: conn.execute(SETUP))
            outcomes = {"ok": 0, "failed": 0}

            async def worker(txns: list[Callable[[apsw.Connection], None]]) -> None:
                for txn in txns:
                    try:
                        await leader.transaction(txn)
                        outcomes["ok"] += 1
                    except (AppError, MicrotrioError):
                        outcomes["failed"] += 1

            serial = 0
            async with trio.open_nursery() as workers:
                for _ in range(6):
                    txns = []
                    for _ in range(12):
                        serial += 1
                        txns.append(random_txn(rng, serial))
                    workers.start_soon(worker, txns)
            assert outcomes["ok"] > 0 and outcomes["failed"] > 0
            for index, payload in rec.entries:
                await follower.applier.apply(index, payload)
            await leader.close()
            await follower.close()
    assert table_checksums(tmp_path / "a" / "microtrio.db") == table_checksums(
        tmp_path / "b" / "microtrio.db"
    )
