"""A follower's ReadIndex request counts as its acknowledgement when it and the leader are a
quorum (two or three voters): the leader answers at once, no heartbeat round. With more
voters (or a requester that is not a voter) a round is still needed."""

from __future__ import annotations

from _rafttest import Net

from microtrio.raft import MsgHeartbeat, MsgReadIndex, MsgReadIndexResp, ReadState, StateRole


def test_three_voters_follower_read_needs_no_heartbeat_round() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    net.sent.clear()
    net.nodes[3].read_index(b"f")
    net.stabilize()
    assert net.apps[3].read_states == [ReadState(index, b"f")]
    kinds = [type(m) for m in net.sent]
    assert kinds == [MsgReadIndex, MsgReadIndexResp]  # no MsgHeartbeat, no acks
    # the leader's own reads still take a round
    net.sent.clear()
    net.nodes[1].read_index(b"l")
    net.stabilize()
    assert net.apps[1].read_states == [ReadState(index, b"l")]
    assert any(isinstance(m, MsgHeartbeat) and m.read_round for m in net.sent)


def test_five_voters_a_follower_cut_off_with_an_old_leader_reads_nothing_stale() -> None:
    """Leader 1 and follower 2 are cut off from 3, 4, 5, which elect 3 and commit a write.
    Answering 2's request without a round (as with three voters) would give 2 the old commit
    index: a stale read of a write that completed before the read started."""
    net = Net([1, 2, 3, 4, 5])
    net.elect(1)
    old = net.propose(b"old")
    side = {1, 2}
    net.filters.append(lambda m: (m.src in side) != (m.dst in side))
    for _ in range(200):  # 3, 4, 5 time out and elect one of them
        net.tick_all(1, skip=side)
        if any(net.nodes[i].role is StateRole.LEADER for i in (3, 4, 5)):
            break
    new_leader = net.leader()
    assert new_leader in (3, 4, 5)
    new = net.propose(b"new")  # committed by 3, 4, 5 alone
    assert new > old and net.nodes[new_leader].committed >= new
    assert net.nodes[2].lead == 1 and net.nodes[1].role is StateRole.LEADER
    net.nodes[2].read_index(b"stale?")
    net.stabilize()
    net.tick(1, 2)
    assert net.apps[2].read_states == []  # no quorum confirms 1: never answered
    net.heal()
    net.tick_all(12)
    for rs in net.apps[2].read_states:
        assert rs.index >= new
