"""ReadIndex rounds are shared: while one heartbeat round for reads is out, reads that
arrive wait for ONE later round (sent when the first is answered), never for the round
already out, which was sent before they arrived (that would not prove leadership at
their arrival: the unsafe variant this test catches). Five voters: with three, a follower's
request is its own acknowledgement and needs no round (test_read_index_requester_quorum)."""

from __future__ import annotations

from _rafttest import Net

from microtrio.raft import (
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgReadIndex,
    MsgReadIndexResp,
    ReadState,
)


def _drain(net: Net) -> list[object]:
    rd = net.nodes[1].ready()
    net.nodes[1].advance(rd)
    return list(rd.messages)


def test_reads_arriving_during_a_round_share_the_next_round() -> None:
    net = Net([1, 2, 3, 4, 5])
    net.elect(1)
    index = net.propose(b"a")
    leader = net.nodes[1]
    term = leader.term
    _drain(net)

    leader.read_index(b"first")
    out = _drain(net)
    first = {m.read_round for m in out if isinstance(m, MsgHeartbeat)}
    # the round goes to two followers: with the leader, a quorum of five
    assert len(first) == 1 and len([m for m in out if isinstance(m, MsgHeartbeat)]) == 2
    (r1,) = first

    # two followers ask while that round is out: no new heartbeats yet
    leader.step(MsgReadIndex(2, 1, 0, b"from-2"))
    leader.step(MsgReadIndex(3, 1, 0, b"from-3"))
    assert not [m for m in _drain(net) if isinstance(m, MsgHeartbeat)]

    # an answer to the round sent BEFORE they arrived releases only the first read
    leader.step(MsgHeartbeatResp(2, 1, term, r1))
    leader.step(MsgHeartbeatResp(4, 1, term, r1))
    rd = leader.ready()
    leader.advance(rd)
    assert list(rd.read_states) == [ReadState(index, b"first")]
    assert not [m for m in rd.messages if isinstance(m, MsgReadIndexResp)]
    second = {m.read_round for m in rd.messages if isinstance(m, MsgHeartbeat)}
    assert len(second) == 1 and min(second) > r1  # one round for both waiting reads
    (r2,) = second

    leader.step(MsgHeartbeatResp(3, 1, term, r2))
    assert not [m for m in _drain(net) if isinstance(m, MsgReadIndexResp)]  # 2 of 5 acked
    leader.step(MsgHeartbeatResp(5, 1, term, r2))
    answers = [m for m in _drain(net) if isinstance(m, MsgReadIndexResp)]
    assert sorted((m.dst, m.ctx, m.index) for m in answers) == [
        (2, b"from-2", index),
        (3, b"from-3", index),
    ]


def test_a_lost_shared_round_is_retried_by_the_next_heartbeat() -> None:
    net = Net([1, 2, 3, 4, 5])
    net.elect(1)
    index = net.propose(b"a")
    lost = {"n": 0}

    def lose_first_round(m: object) -> bool:
        if isinstance(m, MsgHeartbeatResp) and m.read_round and lost["n"] < 4:
            lost["n"] += 1
            return True
        return False

    net.filters.append(lose_first_round)
    net.nodes[1].read_index(b"x")
    net.nodes[3].read_index(b"y")
    net.stabilize()
    assert net.apps[1].read_states == [] and net.apps[3].read_states == []
    net.tick_all(3)  # the periodic heartbeat carries the newest round
    assert net.apps[1].read_states == [ReadState(index, b"x")]
    assert net.apps[3].read_states == [ReadState(index, b"y")]


def _round_targets(net: Net) -> list[int]:
    return [m.dst for m in net.sent if isinstance(m, MsgHeartbeat) and m.read_round]


def test_a_read_round_asks_only_a_quorum_and_alternates() -> None:
    """Three voters: the leader and one follower are a quorum, so each of the leader's read
    rounds goes to one follower, the two taking turns."""
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    targets = []
    for k in range(4):
        net.sent.clear()
        net.nodes[1].read_index(b"r%d" % k)
        net.stabilize()
        assert net.apps[1].read_states[-1] == ReadState(index, b"r%d" % k)
        targets += _round_targets(net)
    assert targets == [2, 3, 2, 3]


def test_a_silent_follower_costs_one_heartbeat_then_is_not_asked() -> None:
    """The follower asked for a round stops answering: the next periodic heartbeat takes
    the round to every member and the other follower's answer releases it; later rounds
    go to the follower that answers, until the silent one answers again."""
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    net.sent.clear()
    net.nodes[1].read_index(b"warm")  # round to 2 (least recently asked, lowest id)
    net.stabilize()
    assert _round_targets(net) == [2]
    net.isolate(3)
    net.sent.clear()
    net.nodes[1].read_index(b"lost")  # round to 3, which does not answer
    net.stabilize()
    assert _round_targets(net) == [3]
    assert net.apps[1].read_states[-1].ctx == b"warm"
    net.tick(1)  # the leader's heartbeat carries the round to 2 as well
    assert net.apps[1].read_states[-1] == ReadState(index, b"lost")
    for k in range(3):
        net.sent.clear()
        net.nodes[1].read_index(b"again%d" % k)
        net.stabilize()
        assert net.apps[1].read_states[-1] == ReadState(index, b"again%d" % k)
        assert _round_targets(net) == [2]
    net.heal()
    net.tick(1)  # 3 answers the periodic heartbeat's round: it is asked again
    targets = []
    for k in range(2):
        net.sent.clear()
        net.nodes[1].read_index(b"back%d" % k)
        net.stabilize()
        targets += _round_targets(net)
    assert sorted(targets) == [2, 3]
