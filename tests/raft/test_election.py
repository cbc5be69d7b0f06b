"""Elections: paper figure 2 / 5.2, 5.4.1 (election restriction), thesis 9.6 (PreVote),
CheckQuorum and leader stickiness, randomized timeouts."""

from __future__ import annotations

import random

import pytest
from _rafttest import Net, entries, with_entries

from microtrio.raft import (
    Config,
    ConfState,
    HardState,
    MsgApp,
    MsgPreVote,
    MsgVote,
    MsgVoteResp,
    NotLeaderError,
    RaftNode,
    StateRole,
    bootstrap_state,
)


def test_fig2_single_voter_elects_itself_and_commits_a_noop() -> None:
    net = Net([1])
    net.campaign(1)
    node = net.nodes[1]
    assert node.role is StateRole.LEADER
    assert node.committed == node.last_index == 2  # bootstrap conf entry + the term's NOOP
    assert net.propose(b"x") == 3
    assert net.apps[1].applied == [b"x"]


def test_fig2_three_voters_elect_one_leader_and_replicate() -> None:
    net = Net([1, 2, 3])
    net.campaign(1)
    assert [r.role for r in net.nodes.values()] == [
        StateRole.LEADER,
        StateRole.FOLLOWER,
        StateRole.FOLLOWER,
    ]
    assert {r.lead for r in net.nodes.values()} == {1}
    for k in range(5):
        net.propose(b"%d" % k)
    for i in (1, 2, 3):
        assert net.apps[i].applied == [b"0", b"1", b"2", b"3", b"4"]
        assert net.stores[i].hard_state.commit == net.nodes[i].committed == 7


def test_fig2_new_leader_appends_noop_in_its_term() -> None:
    net = Net([1, 2, 3])
    net.campaign(1)
    leader_store = net.stores[1]
    assert leader_store.entries[-1].term == net.nodes[1].term
    assert leader_store.entries[-1].data == b""


def test_fig2_voter_grants_at_most_one_vote_per_term() -> None:
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    node = net.nodes[3]
    node.step(MsgVote(1, 3, 5, 1, 1))
    node.step(MsgVote(2, 3, 5, 1, 1))
    replies = [m for m in node.ready().messages if isinstance(m, MsgVoteResp)]
    assert [(m.dst, m.reject) for m in replies] == [(1, False), (2, True)]
    assert node.vote == 1 and node.term == 5


def test_fig2_vote_is_persisted_in_the_same_ready_as_the_grant() -> None:
    net = Net([1, 2, 3], pre_vote=False)
    node = net.nodes[2]
    node.step(MsgVote(1, 2, 9, 1, 1))
    rd = node.ready()
    assert rd.hard_state == HardState(term=9, vote=1, commit=1)
    assert any(isinstance(m, MsgVoteResp) and not m.reject for m in rd.messages)


def test_5_4_1_vote_refused_to_candidate_with_stale_log() -> None:
    conf = ConfState.of_voters([1, 2, 3])
    hs = HardState(term=3, vote=0, commit=1)
    # node 1 has entries of terms 1,3; candidate 2 only has term 1,2 entries.
    node = RaftNode(
        Config(id=1, pre_vote=False), random.Random(1), with_entries(1, hs, entries(1, 3), conf)
    )
    node.step(MsgVote(2, 1, 4, last_index=3, last_term=2))
    node.step(MsgVote(3, 1, 4, last_index=9, last_term=2))  # longer but older last term
    rd = node.ready()
    assert [m.reject for m in rd.messages if isinstance(m, MsgVoteResp)] == [True, True]
    node.step(MsgVote(2, 1, 4, last_index=3, last_term=3))  # same last term and length
    node.advance(rd)
    rd2 = node.ready()
    assert [m.reject for m in rd2.messages if isinstance(m, MsgVoteResp)] == [False]


def test_5_4_1_candidate_with_stale_log_cannot_win() -> None:
    net = Net([1, 2, 3])
    net.campaign(1)
    net.isolate(3)
    net.propose(b"a")
    net.heal()
    net.isolate(1)  # old leader gone; 3 lacks "a" and must lose against 2
    net.campaign(3)
    assert net.nodes[3].role is not StateRole.LEADER
    net.campaign(2)
    assert net.nodes[2].role is StateRole.LEADER
    net.stabilize()
    assert net.apps[3].applied == [b"a"]


def test_9_6_prevote_keeps_term_of_partitioned_node() -> None:
    net = Net([1, 2, 3])
    net.campaign(1)
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(3, 60)  # many election timeouts while cut off
    assert net.nodes[3].term == term  # pre-candidates never bump their term
    assert net.nodes[3].role is StateRole.PRE_CANDIDATE
    net.heal()
    net.tick_all(5)
    assert net.leader() == 1 and net.nodes[1].term == term  # no disruption on rejoin


def test_9_6_without_prevote_a_rejoining_node_disrupts() -> None:
    """The counter-example PreVote exists for (CheckQuorum off too)."""
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    net.campaign(1)
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(3, 60)
    assert net.nodes[3].term > term + 1
    net.heal()
    net.tick_all(30)
    assert net.nodes[net.leader()].term > term


def test_9_6_prevote_message_does_not_change_receiver_term() -> None:
    net = Net([1, 2, 3])
    node = net.nodes[2]
    node.step(MsgPreVote(3, 2, 7, 1, 1))
    assert node.term == 1 and node.vote == 0
    rd = node.ready()
    assert rd.hard_state is None
    (resp,) = rd.messages
    assert resp.term == 7 and not resp.reject  # type: ignore[union-attr]


def test_check_quorum_isolated_leader_steps_down() -> None:
    net = Net([1, 2, 3], election_tick=10)
    net.campaign(1)
    net.isolate(1)
    net.tick(1, 9)
    assert net.nodes[1].status().role is StateRole.LEADER
    net.tick(1, 11)
    assert net.nodes[1].status().role is StateRole.FOLLOWER
    with pytest.raises(NotLeaderError):
        net.nodes[1].propose(b"x")


def test_check_quorum_connected_leader_stays() -> None:
    net = Net([1, 2, 3])
    net.campaign(1)
    net.tick_all(100)
    assert net.leader() == 1 and net.nodes[1].term == 2


def test_check_quorum_leader_stickiness_ignores_vote_requests() -> None:
    net = Net([1, 2, 3], pre_vote=False)
    net.campaign(1)
    follower = net.nodes[2]
    follower.step(MsgVote(3, 2, 10, 99, 99))
    assert follower.term == 2 and follower.vote == 1 and follower.lead == 1
    assert not any(isinstance(m, MsgVoteResp) for m in follower.ready().messages)


def test_randomized_election_timeout_is_in_range() -> None:
    seen = set()
    for seed in range(200):
        node = RaftNode(
            Config(id=1, election_tick=10),
            random.Random(seed),
            bootstrap_state(ConfState.of_voters([1, 2, 3])),
        )
        ticks = 0
        while node.role is StateRole.FOLLOWER:
            node.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20
    assert len(seen) >= 8  # actually random


def test_nonvoter_never_campaigns() -> None:
    net = Net([1, 2], voters=[1])
    net.tick(2, 100)
    assert net.nodes[2].role is StateRole.FOLLOWER
    assert not net.sent


def test_candidate_steps_down_on_quorum_of_rejections() -> None:
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    net.campaign(1)
    net.isolate(3)
    net.propose(b"a")
    net.heal()
    net.nodes[3].step(MsgVote(9, 3, 1, 0, 0))  # stale term: ignored
    net.campaign(3)  # stale log: 1 and 2 refuse
    assert net.nodes[3].role is StateRole.FOLLOWER
    assert net.nodes[3].term == 3 and net.nodes[3].vote == 3
    assert net.nodes[1].role is StateRole.FOLLOWER  # the higher term deposed the leader
    net.campaign(1)
    assert net.leader() == 1 and net.apps[3].applied == [b"a"]


def test_termless_protocol_messages_are_dropped() -> None:
    net = Net([1, 2, 3])
    node = net.nodes[2]
    node.step(MsgVote(3, 2, 0, 99, 99))
    node.step(MsgApp(1, 2, 0, 1, 1, (), 5))
    assert node.lead == 0 and node.vote == 0
    assert not node.ready().messages
