"""A replicated database applies with WAL + synchronous=NORMAL (the Raft log is durable and
replayed on restart); a single member's database keeps synchronous=FULL."""

from __future__ import annotations

from pathlib import Path

import apsw
import trio

from microtrio._db import Applier, Database, ExtensionRegistry, LocalCommitter


class LogBacked:
    """A committer standing in for the Raft one (anything but the local committer)."""

    def __init__(self, applier: Applier) -> None:
        self._local = LocalCommitter(applier)

    async def commit(self, payload: bytes) -> int:
        return await self._local.commit(payload)

    async def read_barrier(self) -> None:
        return None

    async def execute_remote(self, request: bytes) -> bytes | None:
        return None  # statement requests run locally

    def serve_remote(self, handler: object) -> None:
        return None


def journal_mode(path: Path) -> str:
    conn = apsw.Connection(str(path))
    try:
        return str(conn.pragma("journal_mode"))
    finally:
        conn.close()


async def synchronous_of(path: Path, factory: type) -> int:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db = Database(path, extensions=ExtensionRegistry(), committer_factory=factory)
            await nursery.start(db.run)
            await db.open(bootstrap=True)
            await db.transaction(lambda conn: conn.execute("CREATE TABLE t (k INTEGER)"))
            conn = db._conn  # the writer connection: the pragma is per connection
            assert conn is not None
            value = int(conn.pragma("synchronous"))
            await db.close()
    return value


async def test_replicated_database_uses_normal_sync(tmp_path: Path) -> None:
    assert await synchronous_of(tmp_path / "raft.db", LogBacked) == 1  # NORMAL
    assert await synchronous_of(tmp_path / "local.db", LocalCommitter) == 2  # FULL
    assert journal_mode(tmp_path / "raft.db") == "wal"
