"""Three databases on one shared in-memory "log": the seam a Raft committer plugs into.

Every member applies every entry in log order; writes are executed on the leader *and*
on a follower (whose payloads travel as bytes, as if forwarded), so batches executed
on a state that another write has since changed are refused on every member and
re-executed: no update is lost.
"""

from __future__ import annotations

from pathlib import Path

import apsw
import trio
from _db_helpers import start_db, table_checksums

from microtrio._db import Applier, Database


class SharedLog:
    def __init__(self) -> None:
        self.appliers: list[Applier] = []
        self.lock = trio.Lock()
        self.index = 0

    async def append(self, payload: bytes) -> int:
        async with self.lock:
            self.index += 1
            for applier in self.appliers:
                await applier.apply(self.index, payload, term=1)
            return self.index


class LogCommitter:
    def __init__(self, log: SharedLog, applier: Applier) -> None:
        self.log = log
        log.appliers.append(applier)

    async def commit(self, payload: bytes) -> int:
        return await self.log.append(payload)

    async def read_barrier(self) -> None:
        async with self.log.lock:  # every appended entry is applied everywhere
            pass

    async def execute_remote(self, request: bytes) -> bytes | None:
        return None  # statement requests run locally

    def serve_remote(self, handler: object) -> None:
        return None


def bump(conn: apsw.Connection) -> int:
    conn.execute("UPDATE counter SET n = n + 1, at = datetime('now'), r = random()")
    return int(conn.execute("SELECT n FROM counter").get)


async def test_writes_on_two_members_are_serializable(tmp_path: Path) -> None:
    log = SharedLog()

    def factory(applier: Applier) -> LogCommitter:
        return LogCommitter(log, applier)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            members: list[Database] = []
            for name in ("m1", "m2", "m3"):
                members.append(
                    await start_db(
                        nursery,
                        tmp_path / name / "microtrio.db",
                        committer_factory=factory,
                        member=name,
                    )
                )
            await members[0].open(bootstrap=True)
            for member in members[1:]:
                await member.open(bootstrap=False)
            await members[0].transaction(
                lambda c: c.execute(
                    "CREATE TABLE counter (n, at, r); INSERT INTO counter VALUES (0, 0, 0)"
                )
            )
            seen: list[int] = []

            async def writer(db: Database, count: int) -> None:
                for _ in range(count):
                    seen.append(await db.transaction(bump))

            async with trio.open_nursery() as writers:
                for db in (members[0], members[1], members[1]):
                    writers.start_soon(writer, db, 15)
            assert sorted(seen) == list(range(1, 46))  # each caller saw its own increment
            assert sum(db.statistics().commits for db in members) == log.index
            # stale batches were skipped alike by every member (and re-executed by their writer)
            refused = [
                {i for i in range(1, log.index + 1) if db.applier.was_refused(i)} for db in members
            ]
            assert refused[0] == refused[1] == refused[2]
            for db in members:
                assert await db.read(lambda c: c.execute("SELECT n FROM counter").get) == 45
                assert db.applied_index == log.index
            for db in members:
                await db.close()
    sums = [table_checksums(tmp_path / name / "microtrio.db") for name in ("m1", "m2", "m3")]
    assert sums[0] == sums[1] == sums[2]
