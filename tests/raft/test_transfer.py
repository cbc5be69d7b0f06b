"""Leadership transfer (thesis 3.10): catch the target up, MsgTimeoutNow, abort on timeout."""

from __future__ import annotations

import pytest
from _rafttest import Net

from microtrio.raft import (
    MsgApp,
    MsgTimeoutNow,
    NotLeaderError,
    ProposalDroppedError,
    RaftUsageError,
    Role,
    StateRole,
)


def test_transfer_to_up_to_date_voter_is_immediate() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(b"a")
    term = net.nodes[1].term
    net.nodes[1].transfer_leadership(2)
    net.stabilize()  # no ticks needed: TimeoutNow, then an election that overrides stickiness
    assert net.leader() == 2
    assert net.nodes[2].term == term + 1
    assert net.nodes[1].role is StateRole.FOLLOWER and net.nodes[1].lead == 2
    net.propose(b"b")
    assert net.apps[1].applied == [b"a", b"b"]


def test_transfer_catches_up_a_lagging_target_first() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(b"%d" % k)
    net.heal()
    net.sent.clear()
    net.nodes[1].transfer_leadership(3)
    with pytest.raises(ProposalDroppedError):
        net.nodes[1].propose(b"during transfer")
    net.stabilize()
    kinds = [type(m) for m in net.sent if m.dst == 3 and isinstance(m, MsgApp | MsgTimeoutNow)]
    assert MsgApp in kinds and kinds[-1] is MsgTimeoutNow  # appends first, then the signal
    assert net.leader() == 3
    assert net.apps[3].applied == [b"%d" % k for k in range(5)]


def test_transfer_is_aborted_after_an_election_timeout() -> None:
    net = Net([1, 2, 3], election_tick=10)
    net.elect(1)
    net.isolate(3)
    net.nodes[1].transfer_leadership(3)
    assert net.nodes[1].status().lead_transferee == 3
    net.tick_all(5, skip=[3])
    with pytest.raises(ProposalDroppedError):
        net.nodes[1].propose(b"x")
    net.tick_all(6, skip=[3])
    assert net.nodes[1].status().lead_transferee == 0
    assert net.leader() == 1
    net.propose(b"accepted again")
    assert net.apps[2].applied == [b"accepted again"]


def test_transfer_errors() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    with pytest.raises(NotLeaderError) as info:
        net.nodes[2].transfer_leadership(3)
    assert info.value.leader_id == 1
    with pytest.raises(RaftUsageError):
        net.nodes[1].transfer_leadership(9)
    net.add_empty(4)
    net.nodes[1].propose_conf_change(net.nodes[1].conf.with_role(4, Role.STANDBY))
    net.stabilize()
    with pytest.raises(RaftUsageError):
        net.nodes[1].transfer_leadership(4)  # stand-bys cannot lead
    net.nodes[1].transfer_leadership(1)  # to itself: nothing to do
    assert net.leader() == 1


def test_not_leader_error_carries_leader_hint() -> None:
    net = Net([1, 2, 3])
    with pytest.raises(NotLeaderError) as none_yet:
        net.nodes[2].propose(b"x")
    assert none_yet.value.leader_id == 0
    net.elect(3)
    with pytest.raises(NotLeaderError) as info:
        net.nodes[2].propose(b"x")
    assert info.value.leader_id == 3
