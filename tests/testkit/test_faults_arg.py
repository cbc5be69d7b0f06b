"""The test kit drives faults only through the public ``DaemonArgs.faults`` field and reads
Raft state only through the public, read-only ``Daemon.replication``: every member is built
with the cluster's :class:`~microtrio.testing.Faults`, a paused member restarted from its
state directory is still cut off (its new transport gets the same rules from its args), and
the replication view names the same leader, by id and by name, on every member."""

from __future__ import annotations

import trio
from _cluster_support import KILLED_MEMBER_LEFTOVERS, execute, write_retrying

from microtrio.testing import Faults, ReplicationState, TestCluster, TestMember, node_id_for

CEILING = 150.0

pytestmark = KILLED_MEMBER_LEFTOVERS  # kills and restarts members


def view(member: TestMember) -> ReplicationState:
    state = member.daemon.replication
    assert state is not None, f"{member.name} has no replication"
    return state


async def test_members_get_the_cluster_faults_through_daemon_args(cluster3: TestCluster) -> None:
    with trio.fail_after(CEILING):
        assert isinstance(cluster3.faults, Faults)
        for member in cluster3:
            assert member.args.faults is cluster3.faults
            assert member.node_id == node_id_for(member.name)
        leader = await cluster3.wait_for_leader()
        states = {m.name: view(m) for m in cluster3}
        assert {s.leader_id for s in states.values()} == {leader.node_id}
        assert {s.leader_name for s in states.values()} == {leader.name}
        assert {s.leader_address for s in states.values()} == {leader.address}
        assert [n for n, s in states.items() if s.is_leader] == [leader.name]
        assert all(s.term >= 1 and s.node_id == node_id_for(n) for n, s in states.items())
        assert {s.role for n, s in states.items() if n != leader.name} == {"follower"}

        await execute(leader, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        index = await cluster3.wait_replicated()
        assert all(view(m).applied_index >= index for m in cluster3)


async def test_a_paused_member_stays_cut_off_across_a_restart(cluster3: TestCluster) -> None:
    """A restarted member waits for a leader before it is ready: cut off, it never hears
    of one (its new transport has the same rules), so its restart finishes only after
    :meth:`TestCluster.resume`."""
    with trio.fail_after(CEILING):
        leader = await cluster3.wait_for_leader()
        await execute(leader, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        follower = cluster3.followers()[0]
        cluster3.pause(follower)
        await cluster3.kill(follower)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cluster3.restart, follower)
            while (daemon := follower.app.daemon) is None or daemon.replication is None:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.02)
            for k in range(3):  # each needs a quorum: the two others
                await write_retrying(leader, f"INSERT INTO t VALUES ({k})")
            await cluster3.wait_replicated()
            assert follower.running and not follower.daemon.state.database_open
            assert view(follower).leader_id == 0  # no message from the leader got through
            assert view(follower).applied_index < view(leader).applied_index
            cluster3.resume(follower)
        await cluster3.wait_for_leader()
        await cluster3.wait_replicated()
        assert await follower.read("SELECT count(*) FROM t") == [(3,)]
