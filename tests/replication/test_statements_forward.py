"""Statement-level writes on a 3-member cluster: a member that does not lead sends the SQL
text and parameters to the leader, which runs them in its own write batch (never refused as
stale), and the answer comes once the write is applied on the member that was asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster

from microtrio._errors import ConflictError, OutcomeUnknownError
from microtrio._replication import CommitterConfig, DriverConfig

CEILING = 90.0
#: Elections after 2-4 s: a loaded machine must not change the leader under the test.
STEADY = DriverConfig(tick_interval=0.1, election_tick=20)


async def test_follower_statements_run_on_the_leader(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=STEADY) as cluster:
            leader = await cluster.leader()
            followers = [m for m in cluster.running() if m is not leader]
            f1, f2 = followers
            await f1.db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            await f1.db.execute("CREATE TABLE u (k TEXT PRIMARY KEY, v BLOB)")
            await f2.db.execute("INSERT INTO c VALUES (1, 0)")
            commits_before = f1.db.statistics().commits + f2.db.statistics().commits
            refused_before = sum(len(m.db.applier._refused) for m in cluster.running())

            # many concurrent read-modify-write statements from both followers: with the
            # optimistic transaction path these would be refused and re-run; here every one
            # runs on the leader's newest state
            async def bump(member_index: int, count: int) -> None:
                db = followers[member_index].db
                for _ in range(count):
                    result = await db.execute("UPDATE c SET n = n + 1 WHERE id = ?", (1,))
                    assert result.rows_affected == 1

            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(bump, i % 2, 5)
            # read-your-writes on the answering member without a read barrier: it answers
            # once it applied the leader's state at the answer, f2's writes included (which
            # otherwise reach it with the next append, or after commit_notify_delay)
            await f1.db.execute("UPDATE c SET n = n + 1 WHERE id = ?", (1,))
            rows = await f1.db.read(lambda c: c.execute("SELECT n FROM c"), stale=True)
            assert rows == [(81,)]
            # the followers' own writers ran none of it, and nothing was refused anywhere
            assert f1.db.statistics().commits + f2.db.statistics().commits == commits_before
            assert sum(len(m.db.applier._refused) for m in cluster.running()) == refused_before
            assert leader.db.statistics().commits < leader.db.statistics().transactions

            # results, RETURNING rows with bytes, and errors travel back intact
            returned = await f2.db.execute(
                "INSERT INTO u VALUES (?, ?) RETURNING k, v", ("a", b"\x00\xff")
            )
            assert returned.rows == (("a", b"\x00\xff"),)
            with pytest.raises(ConflictError, match="UNIQUE"):
                await f1.db.execute_many(
                    [
                        ("INSERT INTO u VALUES ('b', NULL)", ()),
                        ("INSERT INTO u VALUES ('a', 1)", ()),
                    ]
                )
            rows = await f1.db.read(lambda c: c.execute("SELECT k FROM u ORDER BY k"))
            assert rows == [("a",)]  # the whole failed call was rolled back
            # the SQL passthrough's writes take the same path
            results = await f2.db.execute_sql(
                "INSERT INTO u VALUES ('p', x'6869'); SELECT v FROM u WHERE k = 'p'"
            )
            assert results[0].rows_affected == 1
            assert results[1].rows == (("hi",),)  # passthrough shapes: blobs as text


async def test_statement_to_a_killed_leader_is_an_unknown_outcome(tmp_path: Path) -> None:
    config = CommitterConfig(forward_timeout=60.0, leader_wait=60.0)
    with trio.fail_after(CEILING):
        async with open_cluster(
            tmp_path, 3, committer_config=config, driver_config=STEADY
        ) as cluster:
            leader = await cluster.leader()
            follower = next(m for m in cluster.running() if m is not leader)
            await follower.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            leader.kill()
            start = trio.current_time()
            with pytest.raises(OutcomeUnknownError):
                await follower.db.execute("INSERT INTO t VALUES (1)")
            assert trio.current_time() - start < 30  # noticed at the leader change
            # the next statement goes to the new leader
            await follower.db.execute("INSERT INTO t VALUES (2)")
            rows = await follower.db.read(lambda c: c.execute("SELECT k FROM t WHERE k = 2"))
            assert rows == [(2,)]
