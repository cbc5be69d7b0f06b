"""The test kit drives faults only through the public ``DaemonArgs.faults`` field and reads
Raft state only through the public, read-only ``Daemon.replication``: every member is built
with the cluster's :class:`~microtrio.testing.Faults`, a paused member restarted from its
state directory is still cut off (its new transport gets the same rules from its args), and
the replication view names the same leader, by id and by name, on every member."""

from __future__ import annotations

import pytest
import trio

from microtrio import MicrotrioError
from microtrio.testing import Faults, ReplicationState, TestCluster, TestMember, node_id_for

CEILING = 150.0

#: Killing a member cancels heartbeat requests whose body httpx is still sending: trio then
#: finalises httpx's body generator and warns, and half-open sockets are left to the garbage
#: collector (as in tests/clusterflow, see its conftest). Every other warning stays an error.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Async generator 'httpx._content.ByteStream.__aiter__':ResourceWarning"
    ),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <async_generator object ByteStream:"
        "pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]


async def execute(member: TestMember, sql: str) -> None:
    async with member.local_client() as client:
        await client.sql_query(sql)


async def write_retrying(member: TestMember, sql: str) -> None:
    while True:
        try:
            await execute(member, sql)
            return
        except MicrotrioError:
            await trio.sleep(0.05)


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
