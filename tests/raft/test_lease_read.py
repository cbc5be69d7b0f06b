"""Lease reads stay linearizable across a partition of the leader: a deposed leader that
has not noticed yet must not answer a read from its lease once another leader may exist.

The lease runs from when the leader SENT the last heartbeat a quorum of voters acknowledged:
each of them refuses (pre-)votes for ``election_tick`` ticks after receiving it, so no other
leader can exist before that, minus a margin for tick phase and clock drift."""

from __future__ import annotations

import pytest
from _rafttest import Net

from microtrio.raft import MsgHeartbeat, ReadState, StateRole


def _lease_net(election_tick: int, seed: int = 0) -> Net:
    """Three lease-reading nodes that have been up for a while (a voter refuses votes for
    its first election timeout after a start: it may have acknowledged a lease before)."""
    net = Net([1, 2, 3], seed=seed, lease_read=True, election_tick=election_tick)
    for node in net.nodes.values():
        node._ticks = election_tick
    return net


def _stale_lease_reads(
    seed: int, offset: int, election_tick: int, *, restart: int = 0
) -> list[tuple[int, int]]:
    """Partition the leader ``offset`` ticks into its lease, let the others elect and commit,
    and collect every read the old leader answers below the newest commit."""
    net = _lease_net(election_tick, seed)
    net.elect(1)
    net.tick_all(offset)
    net.isolate(1)
    if restart:
        net.restart(restart)  # a voter that acknowledged the lease crashes and comes back
    stale: list[tuple[int, int]] = []
    newest = net.nodes[1].committed
    for _ in range(4 * election_tick):
        net.tick_all(1)
        for i in (2, 3):
            node = net.nodes[i]
            if node.role is StateRole.LEADER and node.term > net.nodes[1].term:
                node.propose(b"w")
                net.stabilize()
                newest = max(newest, node.committed)
        old = net.nodes[1]
        if old.role is not StateRole.LEADER:
            break
        before = len(net.apps[1].read_states)
        old.read_index(b"r")
        net.process(1)
        for rs in net.apps[1].read_states[before:]:
            if rs.index < newest:
                stale.append((rs.index, newest))
    return stale


@pytest.mark.parametrize("election_tick", [5, 10])
@pytest.mark.parametrize("restart", [0, 2])
def test_a_partitioned_leader_never_answers_a_stale_lease_read(
    election_tick: int, restart: int
) -> None:
    for seed in range(6):
        for offset in range(election_tick + 1):
            found = _stale_lease_reads(seed, offset, election_tick, restart=restart)
            assert found == [], (seed, offset)


def test_lease_read_answers_at_once_while_heartbeats_are_acknowledged() -> None:
    net = _lease_net(5)
    net.elect(1)
    net.tick_all(3)
    for _ in range(10):
        net.tick_all(1)
        net.sent.clear()
        net.nodes[1].read_index(b"lease")
        rd = net.nodes[1].ready()
        assert rd.read_states == (ReadState(net.nodes[1].committed, b"lease"),)
        assert not [m for m in rd.messages if isinstance(m, MsgHeartbeat)]
        net.nodes[1].advance(rd)
        net.stabilize()


def test_an_expired_lease_falls_back_to_a_heartbeat_round() -> None:
    net = _lease_net(10)
    net.elect(1)
    net.tick_all(2)
    # the followers stop answering heartbeats for a while (appends still flow)
    net.filters.append(lambda m: type(m).__name__ == "MsgHeartbeatResp")
    net.tick_all(8)
    net.sent.clear()
    net.nodes[1].read_index(b"late")
    net.process(1)
    assert net.apps[1].read_states == []  # no lease left: a heartbeat round first
    assert [m for m in net.sent if isinstance(m, MsgHeartbeat) and m.read_round]
    net.heal()
    net.stabilize()
    assert [rs.ctx for rs in net.apps[1].read_states] == [b"late"]


def test_a_restarted_voter_keeps_the_lease_it_acknowledged() -> None:
    """Node 3 lost the leader long ago (its election timer ran out); node 2 acknowledged the
    leader's lease, then crashes and restarts at once while the leader is cut off. Had node 2
    forgotten its promise, node 3 would win at once and commit while node 1 still reads from
    its lease."""
    for seed in range(6):
        net = _lease_net(5, seed)
        net.elect(1)
        net.tick_all(2)
        net.cut |= {(1, 3), (3, 1)}
        net.tick_all(12)  # node 3 campaigns, node 2 refuses: it follows node 1
        assert net.nodes[1].role is StateRole.LEADER
        three = net.nodes[3]
        while three._election_elapsed + 1 < three._randomized_timeout:
            net.tick_all(1)  # until node 3 campaigns at its next tick
        net.isolate(1)
        net.restart(2)
        newest = net.nodes[1].committed
        for _ in range(3):
            net.tick_all(1)
            for i in (2, 3):
                node = net.nodes[i]
                if node.role is StateRole.LEADER and node.term > net.nodes[1].term:
                    node.propose(b"w")
                    net.stabilize()
                    newest = max(newest, node.committed)
            if net.nodes[1].role is not StateRole.LEADER:
                break
            before = len(net.apps[1].read_states)
            net.nodes[1].read_index(b"r")
            net.process(1)
            for rs in net.apps[1].read_states[before:]:
                assert rs.index >= newest, (seed, rs.index, newest)


def test_a_late_ack_of_a_resent_round_counts_from_its_first_send() -> None:
    """A read round is re-sent with every heartbeat while it waits; an acknowledgement that
    answers its FIRST send and arrives late must not extend the lease from the last send."""
    from microtrio.raft import MsgHeartbeatResp

    net = _lease_net(20)  # lease: 18 ticks from a send; quorum check every 20
    net.elect(1)
    net.tick_all(2)
    leader = net.nodes[1]
    held: list[MsgHeartbeatResp] = []
    read_round = [-1]

    def hold(m: object) -> bool:
        if isinstance(m, MsgHeartbeatResp):
            if m.read_round == read_round[0] and not held and m.src == 2:
                held.append(m)
            return True  # no acknowledgement gets through meanwhile
        return False

    net.filters.append(hold)
    net.tick_all(19)  # the lease runs out
    leader.read_index(b"r1")  # a heartbeat round R, re-sent at every tick below
    read_round[0] = leader._readonly.round
    net.stabilize()
    net.tick_all(18)  # 18 ticks after R was first sent, one after it was last re-sent
    assert held and leader.role is StateRole.LEADER
    net.heal()
    net.queue.append(held[0])  # the ack of R's first send, very late
    net.stabilize()
    assert [rs.ctx for rs in net.apps[1].read_states] == [b"r1"]
    leader.read_index(b"r2")
    rd = leader.ready()
    assert rd.read_states == ()  # R's first send is too old to lease from
    leader.advance(rd)
