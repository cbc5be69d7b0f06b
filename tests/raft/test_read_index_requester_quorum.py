"""A follower's ReadIndex request counts as its acknowledgement when it and the leader are a
quorum (two or three voters): the leader answers at once, no heartbeat round. With more
voters (or a requester that is not a voter) a round is still needed."""

from __future__ import annotations

from _rafttest import Net

from microtrio.raft import (
    MsgApp,
    MsgHeartbeat,
    MsgReadIndex,
    MsgReadIndexResp,
    ReadState,
    StateRole,
)


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


def test_answer_read_is_what_stepping_the_request_would_send() -> None:
    """``RaftNode.answer_read`` (the driver calls it from a connection's receive loop) gives
    the same answer as stepping a follower's request, and nothing when a round or a step
    is needed: on a follower, before the leader's term has a committed entry, for a
    requester that is not a voter, or with more than three voters (without a lease)."""
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    leader = net.nodes[1]
    request = MsgReadIndex(3, 1, 0, b"f")
    assert not leader.has_ready()
    assert leader.answer_read(request) == MsgReadIndexResp(1, 3, 0, index, b"f")
    assert not leader.has_ready()  # nothing queued: it only read the node's state
    assert net.nodes[2].answer_read(MsgReadIndex(3, 2, 0, b"f")) is None  # not the leader
    assert leader.answer_read(MsgReadIndex(9, 1, 0, b"x")) is None  # not a voter
    net.sent.clear()
    leader.step(request)  # the stepped path sends the same answer
    net.stabilize()
    assert MsgReadIndexResp(1, 3, 0, index, b"f") in net.sent

    five = Net([1, 2, 3, 4, 5])
    five.elect(1)
    five.propose(b"a")
    assert five.nodes[1].answer_read(MsgReadIndex(3, 1, 0, b"f")) is None  # needs a round

    fresh = Net([1, 2, 3])
    fresh.filters.append(lambda m: isinstance(m, MsgApp))  # its term's first entry stays out
    fresh.campaign(1)
    fresh.stabilize()
    assert fresh.nodes[1].role is StateRole.LEADER
    assert fresh.nodes[1].answer_read(MsgReadIndex(3, 1, 0, b"f")) is None
