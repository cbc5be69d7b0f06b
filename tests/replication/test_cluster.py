"""Issue 4: real replicated members (real TLS, hypercorn, storage, driver, Database) in one
trio.run."""

from __future__ import annotations

from pathlib import Path

import trio
from _raft_cluster import checksums, open_cluster, sql, write

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


async def test_leader_killed_new_leader_takes_over_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            acked = []
            for k in range(10):
                await write(cluster.members[k % 3], sql("INSERT INTO t VALUES (?)", k))
                acked.append(k)
            old_term = leader.repl.driver.term
            leader.kill()
            new_leader = await cluster.leader()
            assert new_leader is not leader
            assert new_leader.repl.driver.term > old_term
            survivors = cluster.running()
            for k in range(10, 20):
                await write(survivors[k % 2], sql("INSERT INTO t VALUES (?)", k))
                acked.append(k)
            for member in survivors:
                rows = await member.db.read(sql("SELECT k FROM t ORDER BY k"))
                assert [r[0] for r in rows] == acked
            # the old leader comes back from disk and catches up
            await cluster.restart(leader)
            rows = await leader.db.read(sql("SELECT k FROM t ORDER BY k"))
            assert [r[0] for r in rows] == acked
            await write(leader, sql("INSERT INTO t VALUES (100)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]


async def test_whole_cluster_restarts_from_disk(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
            for k in range(5):
                await leader.db.transaction(sql("INSERT INTO t VALUES (?, randomblob(8))", k))
            before = await checksums(leader)
            applied = leader.repl.driver.applied_index
            for member in cluster.members:
                member.kill()
            for member in cluster.members:
                await member.wait_stopped()
            await cluster.start(cluster.members, bootstrap=[m.id for m in cluster.members])
            async with trio.open_nursery() as nursery:
                for member in cluster.members:
                    nursery.start_soon(member.open_database)
            leader = await cluster.leader()
            for member in cluster.members:
                # nothing applied twice: the applied index resumed where it was
                assert member.repl.driver.applied_index >= applied
                assert await checksums(member) == before
            await leader.db.transaction(sql("INSERT INTO t VALUES (99, 'after')"))
            rows = await cluster[0].db.read(sql("SELECT count(*) FROM t"))
            assert rows == [(6,)]


async def test_five_members_survive_two_failures(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 5) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            leader.kill()
            others = [m for m in cluster.members if m is not leader]
            others[0].kill()
            new_leader = await cluster.leader()
            assert new_leader not in (leader, others[0])
            for k, member in enumerate(cluster.running()):
                await write(member, sql("INSERT INTO t VALUES (?)", k))
            for member in cluster.running():
                assert await member.db.read(sql("SELECT count(*) FROM t")) == [(3,)]
