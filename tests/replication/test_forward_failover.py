"""A write forwarded to a leader that dies is given up once the member stops seeing that
leader (about an election timeout), not after the whole forward timeout: the member's
database writer is free again for the next batch, which the new leader commits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster, sql

from microtrio._errors import OutcomeUnknownError
from microtrio._replication import CommitterConfig

CEILING = 60.0
FORWARD_TIMEOUT = 30.0  # far beyond the election timeout of the test driver (about 0.5 s)


async def test_forward_to_a_killed_leader_ends_at_the_leader_change(tmp_path: Path) -> None:
    config = CommitterConfig(forward_timeout=FORWARD_TIMEOUT, leader_wait=FORWARD_TIMEOUT)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, committer_config=config) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            follower = next(m for m in cluster.running() if m is not leader)
            await follower.db.read(sql("SELECT 1"))  # the follower has applied the table
            leader.kill()
            assert follower.repl.driver.leader_id == leader.id  # it does not know yet
            start = trio.current_time()
            with pytest.raises(OutcomeUnknownError):
                await follower.db.transaction(sql("INSERT INTO t VALUES (1)"))
            assert trio.current_time() - start < FORWARD_TIMEOUT / 3
            # the writer is free: the next write goes to the new leader
            await follower.db.transaction(sql("INSERT INTO t VALUES (2)"))
            assert trio.current_time() - start < FORWARD_TIMEOUT / 2
            new_leader = await cluster.leader()
            assert new_leader is not leader
            rows = await follower.db.read(sql("SELECT k FROM t WHERE k = 2"))
            assert [r[0] for r in rows] == [2]
