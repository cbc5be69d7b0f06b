"""Membership (thesis chapter 4): one change at a time through the log, roles voter / stand-by /
spare, configuration in effect on append (reverted on truncation), removing the leader, and
quorum-loss recovery with force_new_configuration."""

from __future__ import annotations

import pytest
from _rafttest import Net

from microtrio.raft import (
    ConfChangeInProgressError,
    ConfState,
    EntryType,
    MsgApp,
    MsgAppResp,
    RaftUsageError,
    Role,
    StateRole,
)


def conf_change(net: Net, node: int, role: Role | None) -> int:
    leader = net.nodes[net.leader()]
    index = leader.propose_conf_change(leader.conf.with_role(node, role))
    net.stabilize()
    return index


def test_ch4_add_standby_replicates_but_does_not_vote_or_count() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(b"a")
    net.add_empty(4)
    conf_change(net, 4, Role.STANDBY)
    net.tick(1, 2)
    assert net.apps[4].applied == [b"a"]
    assert net.nodes[4].conf.standbys == {4}
    net.isolate(2)
    net.isolate(3)
    index = net.propose(b"b")
    net.tick(1, 2)
    assert net.stores[4].entries[-1].index == index  # the stand-by has it ...
    assert net.nodes[1].committed < index  # ... but does not make a quorum with the leader
    net.tick(4, 50)
    assert net.nodes[4].role is StateRole.FOLLOWER  # and never campaigns


def test_ch4_promote_standby_to_voter() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.add_empty(4)
    conf_change(net, 4, Role.STANDBY)
    conf_change(net, 4, Role.VOTER)
    assert net.nodes[1].conf.voters == {1, 2, 3, 4}
    net.isolate(3)
    index = net.propose(b"c")  # 1, 2, 4: three of four voters
    assert net.nodes[1].committed == index
    net.heal()
    net.nodes[1].transfer_leadership(4)  # a promoted voter can lead
    net.stabilize()
    assert net.leader() == 4


def test_ch4_spare_receives_nothing() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.add_empty(5)
    conf_change(net, 5, Role.SPARE)
    net.propose(b"x")
    net.tick_all(5)
    assert net.nodes[1].conf.spares == {5}
    assert not [m for m in net.sent if m.dst == 5]
    assert 5 not in net.nodes[1].status().progress


def test_ch4_one_change_at_a_time() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    leader = net.nodes[1]
    leader.propose_conf_change(leader.conf.with_role(4, Role.STANDBY))
    with pytest.raises(ConfChangeInProgressError):
        leader.propose_conf_change(leader.conf.with_role(5, Role.STANDBY))
    net.stabilize()
    leader.propose_conf_change(leader.conf.with_role(5, Role.STANDBY))
    net.stabilize()
    assert leader.conf.standbys == {4, 5}


def test_ch4_new_leader_changes_membership_only_after_committing_in_its_term() -> None:
    net = Net([1, 2, 3])
    net.filters.append(lambda m: isinstance(m, MsgAppResp))
    net.elect(1)
    leader = net.nodes[1]
    with pytest.raises(ConfChangeInProgressError):
        leader.propose_conf_change(leader.conf.with_role(4, Role.STANDBY))


def test_ch4_change_must_touch_exactly_one_member() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    leader = net.nodes[1]
    two = leader.conf.with_role(4, Role.VOTER).with_role(5, Role.VOTER)
    with pytest.raises(RaftUsageError):
        leader.propose_conf_change(two)
    with pytest.raises(RaftUsageError):
        leader.propose_conf_change(leader.conf)


def test_ch4_configuration_takes_effect_on_append_not_on_commit() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.filters.append(lambda m: isinstance(m, MsgAppResp))  # nothing new commits
    index = conf_change(net, 3, None)
    for i in (1, 2, 3):  # the removed member still receives it while it is uncommitted
        assert net.nodes[i].committed < index
        assert net.nodes[i].conf.voters == {1, 2}  # in effect wherever it was appended


def test_ch4_removed_member_learns_and_applies_its_removal() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    index = conf_change(net, 3, None)
    assert net.apps[3].applied_index == index  # the app can now shut the member down
    assert net.nodes[3].conf.voters == {1, 2}
    net.sent.clear()
    net.tick_all(40)
    assert not [m for m in net.sent if m.dst == 3 or m.src == 3]  # no more traffic either way
    assert net.leader() == 1


def test_ch4_uncommitted_configuration_reverts_when_truncated() -> None:
    net = Net([1, 2, 3], check_quorum=False)
    net.elect(1)
    net.filters.append(lambda m: isinstance(m, MsgApp) and m.src == 1)
    conf_change(net, 4, Role.STANDBY)
    assert net.nodes[1].conf.standbys == {4}
    assert net.nodes[2].conf.standbys == frozenset()
    net.heal()
    net.isolate(1)
    net.elect(2)
    net.heal()
    net.tick(2, 3)
    assert net.nodes[1].role is StateRole.FOLLOWER
    assert net.nodes[1].conf == ConfState.of_voters([1, 2, 3])  # the entry was overwritten
    assert all(e.type is not EntryType.CONF_CHANGE or e.index == 1 for e in net.stores[1].entries)


def test_ch4_remove_follower() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    conf_change(net, 3, None)
    net.sent.clear()
    net.isolate(3)
    index = net.propose(b"two-node cluster")
    assert net.nodes[1].committed == index  # quorum of {1, 2}
    assert not [m for m in net.sent if m.dst == 3]


def test_ch4_removing_the_leader_steps_it_down_after_commit() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    leader = net.nodes[1]
    net.filters.append(lambda m: isinstance(m, MsgAppResp))
    index = leader.propose_conf_change(leader.conf.with_role(1, None))
    net.stabilize()
    assert leader.status().role is StateRole.LEADER  # still leads meanwhile ...
    assert leader.committed < index
    net.heal()
    net.tick(1, 2)
    assert leader.status().role is StateRole.FOLLOWER  # ... and steps down once committed
    new = net.leader()
    assert new in (2, 3)  # handed over at once by MsgTimeoutNow, without waiting a timeout
    assert net.nodes[new].conf.voters == {2, 3}
    net.propose(b"after")
    assert net.apps[2].applied[-1] == b"after" == net.apps[3].applied[-1]


def test_ch4_demoted_leader_keeps_following_as_standby() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    conf_change(net, 1, Role.STANDBY)
    net.tick(1, 1)
    new = net.leader()
    assert new in (2, 3)
    net.propose(b"still replicated to the stand-by")
    assert net.apps[1].applied[-1] == b"still replicated to the stand-by"


def test_force_new_configuration_recovers_from_quorum_loss() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(b"before")
    net.isolate(2)
    net.isolate(3)
    net.tick_all(30, skip=[2, 3])
    assert net.nodes[1].role is not StateRole.LEADER  # lost its quorum
    net.restart(1)
    index = net.nodes[1].force_new_configuration(ConfState.of_voters([1]))
    net.stabilize()
    assert net.stores[1].entries[-1].index == index
    net.campaign(1)
    assert net.leader() == 1
    net.propose(b"after")
    assert net.apps[1].applied[-2:] == [b"before", b"after"]
    with pytest.raises(RaftUsageError):
        net.nodes[1].force_new_configuration(ConfState())


def test_ch4_removed_leader_sends_no_appends_after_stepping_down() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    leader = net.nodes[1]
    leader.propose_conf_change(leader.conf.with_role(1, None))
    net.stabilize()
    term = leader.term
    stepped_down = False
    for m in net.sent:
        if m.src == 1 and isinstance(m, MsgApp) and stepped_down:
            raise AssertionError(f"follower sent {m}")
        if m.src == 1 and type(m).__name__ == "MsgTimeoutNow":
            stepped_down = True
    assert stepped_down and leader.status().role is StateRole.FOLLOWER
    assert net.nodes[net.leader()].term == term + 1


def test_ch4_member_removed_while_down_rejoins_with_an_empty_log() -> None:
    # A forced removal of a dead stand-by: the leader keeps its progress (it never learns
    # of its removal). The member comes back wiped, with the same id, and is added again:
    # its old match index must not survive, or the leader never backs up to its empty log.
    net = Net([1, 2, 3])
    net.elect(1)
    net.add_empty(4)
    conf_change(net, 4, Role.STANDBY)
    net.propose(b"a")
    assert net.nodes[1].prs[4].match >= 3
    net.isolate(4)
    conf_change(net, 4, None)
    assert 4 in net.nodes[1].prs  # lingering: the removed member never held its removal
    net.heal()
    net.add_empty(4)  # wiped, same id
    conf_change(net, 4, Role.STANDBY)
    index = net.propose(b"b")
    net.tick(1, 3)
    net.stabilize()
    assert net.stores[4].entries and net.stores[4].entries[-1].index == index
    assert net.apps[4].applied[-2:] == [b"a", b"b"]
