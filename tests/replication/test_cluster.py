"""Issue 4: real replicated members (real TLS, hypercorn, storage, driver, Database) in one
trio.run."""

from __future__ import annotations

from pathlib import Path

import trio
from _raft_cluster import checksums, open_cluster, sql

CEILING = 60.0


async def test_three_members_write_through_leader_and_followers(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            followers = [m for m in cluster.members if m is not leader]
            await leader.db.transaction(sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await leader.db.transaction(sql("INSERT INTO t (v) VALUES ('from leader')"))
            for k, follower in enumerate(followers):
                await follower.db.transaction(sql("INSERT INTO t (v) VALUES (?)", f"f{k}"))
            # linearizable read on a follower sees every acknowledged write
            rows = await followers[0].db.read(sql("SELECT v FROM t ORDER BY id"))
            assert [r[0] for r in rows] == ["from leader", "f0", "f1"]
            index = leader.repl.driver.applied_index
            await cluster.wait_applied(index)
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]
            assert "t" in sums[0]
