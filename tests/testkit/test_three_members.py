"""Three in-process members joined with tokens: writes through any member are replicated to
every member's database; killing the leader elects another that keeps taking writes; the
killed member restarts from its state and catches up; a paused member falls behind and
catches up on resume; a minority side of a partition cannot elect a leader."""

from __future__ import annotations

import trio
from _cluster_support import execute, write_retrying

from microtrio.testing import TestCluster

CEILING = 120.0


async def test_formed_replicates_and_survives_the_leader(cluster3: TestCluster) -> None:
    with trio.fail_after(CEILING):
        assert [m.name for m in cluster3] == ["member1", "member2", "member3"]
        view = await cluster3.members_view()
        assert sorted(m["name"] for m in view) == ["member1", "member2", "member3"]
        assert len({m.address for m in cluster3}) == 3
        leader = await cluster3.wait_for_leader()
        assert leader in cluster3.members

        await execute(cluster3[0], "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        for k, member in enumerate(cluster3.members):  # through every member
            await execute(member, f"INSERT INTO t VALUES ({k})")
        await cluster3.wait_replicated()
        seen = await cluster3.read_all("SELECT k FROM t ORDER BY k")
        assert seen == {m.name: [(0,), (1,), (2,)] for m in cluster3}

        await cluster3.kill(leader)
        survivor = [m for m in cluster3 if m is not leader][0]
        new_leader = await cluster3.wait_for_leader(exclude=[leader])
        assert new_leader is not leader and new_leader.running
        await write_retrying(survivor, "INSERT INTO t VALUES (3)")

        await cluster3.restart(leader)
        await cluster3.wait_for_leader()
        await cluster3.wait_replicated()
        seen = await cluster3.read_all("SELECT count(*) FROM t")
        assert seen == {m.name: [(4,)] for m in cluster3}


async def test_pause_resume_and_partition(cluster3: TestCluster) -> None:
    with trio.fail_after(CEILING):
        leader = await cluster3.wait_for_leader()
        await execute(leader, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        # followers learn a commit with the next append or a few ms later (the leader
        # holds commit-only notifications): have the table everywhere before pausing one
        await cluster3.wait_replicated()
        follower = cluster3.followers()[0]
        cluster3.pause(follower)
        await write_retrying(leader, "INSERT INTO t VALUES (1)")
        index = await cluster3.wait_replicated()  # the others, not the paused one
        assert follower.applied_index < index
        assert await follower.read("SELECT count(*) FROM t") == [(0,)]
        cluster3.resume(follower)
        await cluster3.wait_replicated()
        assert await follower.read("SELECT count(*) FROM t") == [(1,)]

        # the leader alone on one side: the other two elect a leader among themselves
        old = await cluster3.wait_for_leader()
        majority = [m for m in cluster3 if m is not old]
        cluster3.partition([old], majority)
        new = await cluster3.wait_for_leader(exclude=[old], among=majority)
        assert new in majority
        await write_retrying(new, "INSERT INTO t VALUES (2)")
        cluster3.heal()
        await cluster3.wait_for_leader()
        await cluster3.wait_replicated()
        seen = await cluster3.read_all("SELECT count(*) FROM t")
        assert seen == {m.name: [(2,)] for m in cluster3}


async def test_add_and_remove_members(cluster3: TestCluster) -> None:
    with trio.fail_after(CEILING):
        fourth = await cluster3.add_member("member4")
        assert fourth.address and fourth is cluster3["member4"]
        await cluster3.wait_formed()  # 4 members: 3 voters and a stand-by
        roles = sorted(m["role"] for m in await cluster3.members_view())
        assert roles == ["stand-by", "voter", "voter", "voter"]
        await execute(cluster3[0], "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        await cluster3.wait_replicated()
        assert await fourth.read("SELECT count(*) FROM t") == [(0,)]

        second = cluster3["member2"]
        await cluster3.remove_member(second)
        assert second not in cluster3.members and not second.running
        assert not (second.state_dir / "cluster.crt").exists()  # it wiped its state
        names = sorted(m["name"] for m in await cluster3.members_view())
        assert names == ["member1", "member3", "member4"]
        await cluster3.wait_formed()
