"""Linearizable reads (thesis 6.4 ReadIndex) and the optional lease-based path."""

from __future__ import annotations

import pytest
from _rafttest import Net

from microtrio.raft import MsgAppResp, MsgHeartbeat, NotLeaderError, ReadState


def test_6_4_leader_read_index_after_heartbeat_quorum() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    net.sent.clear()
    net.nodes[1].read_index(b"ctx1")
    net.process(1)
    assert net.apps[1].read_states == []  # not before a quorum confirmed leadership
    net.stabilize()
    assert net.apps[1].read_states == [ReadState(index, b"ctx1")]
    rounds = {m.read_round for m in net.sent if isinstance(m, MsgHeartbeat)}
    assert rounds == {1}


def test_6_4_follower_read_is_forwarded_to_the_leader() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    index = net.propose(b"a")
    net.nodes[3].read_index(b"f")
    net.stabilize()
    assert net.apps[3].read_states == [ReadState(index, b"f")]
    assert net.apps[1].read_states == []


def test_6_4_deposed_leader_cannot_serve_reads() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.nodes[1].read_index(b"stale?")
    net.tick(1, 3)
    assert net.apps[1].read_states == []


def test_6_4_new_leader_waits_for_an_entry_of_its_term() -> None:
    net = Net([1, 2, 3])
    net.filters.append(lambda m: isinstance(m, MsgAppResp))
    net.elect(1)
    net.nodes[1].read_index(b"early")
    net.tick(1, 2)
    assert net.apps[1].read_states == []  # NOOP not committed yet: commit index may be stale
    net.heal()
    net.tick(1, 2)
    (rs,) = net.apps[1].read_states
    assert rs.ctx == b"early" and rs.index == net.nodes[1].committed == 2


def test_6_4_reads_are_released_in_order_by_a_later_round() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    hb = [False]

    def drop_first_round(m: object) -> bool:
        if isinstance(m, MsgHeartbeat) and m.read_round == 1 and not hb[0]:
            return True
        return False

    net.filters.append(drop_first_round)
    net.nodes[1].read_index(b"r1")
    net.stabilize()
    assert net.apps[1].read_states == []
    hb[0] = True
    net.nodes[1].read_index(b"r2")
    net.stabilize()
    # r2 arrived while round 1 was out: it shares the next round, which leaves when
    # round 1 is answered or with the next heartbeat (round 1 was lost: the heartbeat)
    assert net.apps[1].read_states == []
    net.tick(1)
    assert [r.ctx for r in net.apps[1].read_states] == [b"r1", b"r2"]


def test_lease_read_answers_without_a_round_trip() -> None:
    net = Net([1, 2, 3], lease_read=True)
    for node in net.nodes.values():
        node._ticks = node.config.election_tick  # up for a while: votes are not held back
    net.elect(1)
    net.tick_all(1)  # a heartbeat round acknowledged by a quorum starts the lease
    net.sent.clear()
    net.nodes[1].read_index(b"lease")
    rd = net.nodes[1].ready()
    assert rd.read_states == (ReadState(net.nodes[1].committed, b"lease"),)
    assert not [m for m in rd.messages if isinstance(m, MsgHeartbeat)]


def test_single_voter_reads_immediately_and_no_leader_raises() -> None:
    net = Net([1])
    net.elect(1)
    net.nodes[1].read_index(b"x")
    net.stabilize()
    assert net.apps[1].read_states == [ReadState(2, b"x")]
    lonely = Net([1, 2, 3])
    with pytest.raises(NotLeaderError):
        lonely.nodes[2].read_index(b"y")
