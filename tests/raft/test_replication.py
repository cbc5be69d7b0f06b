"""Replication: 5.3 log matching, 5.4.2 / figure 8 commit rule, fast backtracking, batching,
pipelining and flow control, restart from persisted state, the Ready contract."""

from __future__ import annotations

import random

import pytest
from _rafttest import Net, entries, with_entries

from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeatResp,
    MsgPreVoteResp,
    MsgVote,
    MsgVoteResp,
    ProgressState,
    RaftNode,
    RaftUsageError,
    StateRole,
)

CONF3 = ConfState.of_voters([1, 2, 3])


def make_leader(node: RaftNode) -> None:
    """Drive ``node`` through (pre-)election by hand, with every voter granting."""
    while node.role is StateRole.FOLLOWER:
        node.tick()
    rd = node.ready()
    node.advance(rd)
    others = sorted(node.conf.voters - {node.id})
    if node.role is StateRole.PRE_CANDIDATE:
        for v in others:
            node.step(MsgPreVoteResp(v, node.id, node.term + 1, False))
        node.advance(node.ready())
    for v in others:
        node.step(MsgVoteResp(v, node.id, node.term, False))
    assert node.role is StateRole.LEADER


def test_5_4_2_leader_commits_old_term_entry_only_with_a_current_term_entry() -> None:
    hs = HardState(term=3, vote=0, commit=1)
    leader = RaftNode(Config(id=1), random.Random(1), with_entries(1, hs, entries(2), CONF3))
    make_leader(leader)  # term 4; log: boot(1), (2, idx2), noop (4, idx3)
    assert leader.term == 4 and leader.last_index == 3
    leader.advance(leader.ready())
    leader.step(MsgAppResp(2, 1, 4, index=2))  # a majority holds index 2 (term 2) ...
    assert leader.committed == 1  # ... but counting never commits an older term's entry
    leader.step(MsgAppResp(2, 1, 4, index=3))
    assert leader.committed == 3  # the current-term entry commits both


def test_figure_8_uncommitted_old_term_entry_may_be_overwritten_safely() -> None:
    net = Net(range(1, 6), pre_vote=False, check_quorum=False, max_msg_entries=1)
    net.elect(1)  # term 2
    for i in (3, 4, 5):
        net.isolate(i)
    net.propose(b"x")  # (2, idx3) on S1, S2 only
    net.heal()
    net.isolate(1)
    net.isolate(2)
    net.filters.append(lambda m: m.src == 5 and isinstance(m, MsgApp))
    net.elect(5)  # term 3 with votes of S3, S4; its NOOP (3, idx3) stays local
    assert net.stores[5].entries[-1].term == 3
    net.heal()
    net.isolate(5)
    net.restart(1)  # S1 crashed meanwhile and comes back as a follower

    def strip_index_4(m: Message) -> Message | None:
        if isinstance(m, MsgApp) and m.src == 1:
            kept = tuple(e for e in m.entries if e.index < 4)
            return MsgApp(m.src, m.dst, m.term, m.prev_index, m.prev_term, kept, m.commit)
        return m

    net.mangle = strip_index_4
    net.elect(1)  # term 4; replicates (2, idx3) to a majority, but not its own NOOP
    terms_at_3 = {i: net.stores[i].entries[2].term for i in (1, 2, 3)}
    assert terms_at_3 == {1: 2, 2: 2, 3: 2}
    assert net.nodes[1].committed == 2  # figure 8 (c): must not commit by counting
    net.heal()
    net.isolate(1)
    net.restart(5)
    net.elect(5)  # figure 8 (d): S5 overwrites index 3 everywhere
    net.heal()
    net.tick_all(3)
    for i in range(1, 6):
        assert net.stores[i].entries[2].term == 3
        assert b"x" not in net.apps[i].applied


def test_5_3_follower_conflicting_suffix_is_replaced() -> None:
    net = Net([1, 2, 3])
    net.load(2, with_entries(2, HardState(3, 0, 1), entries(3, 3, 3, 3), CONF3))
    net.load(1, with_entries(1, HardState(4, 0, 1), entries(4), CONF3))
    net.load(3, with_entries(3, HardState(4, 0, 1), entries(4), CONF3))
    net.elect(1)
    net.propose(b"y")
    logs = {i: [(e.index, e.term) for e in net.stores[i].entries] for i in (1, 2, 3)}
    assert logs[1] == logs[2] == logs[3]
    assert len(logs[2]) == 4  # boot, (4, idx2), noop, y; the four term-3 entries are gone
    assert net.apps[2].applied == [b"", b"y"]


def test_fast_backtracking_skips_a_whole_divergent_term_per_round_trip() -> None:
    net = Net([1, 2, 3], max_msg_entries=8)
    divergent = entries(*([2] * 10 + [3] * 60))
    net.load(2, with_entries(2, HardState(3, 0, 1), divergent, CONF3))
    good = entries(*([2] * 10 + [4] * 3))
    net.load(1, with_entries(1, HardState(4, 0, 1), good, CONF3))
    net.load(3, with_entries(3, HardState(4, 0, 1), good, CONF3))
    net.elect(1)
    rejects = [m for m in net.sent if isinstance(m, MsgAppResp) and m.src == 2 and m.reject]
    assert len(rejects) == 1  # one round trip skips all 60 divergent entries
    # the follower points at its last entry at or below the probe with term <= the probe's
    assert (rejects[0].index, rejects[0].reject_hint, rejects[0].log_term) == (14, 14, 3)
    assert [e.term for e in net.stores[2].entries] == [e.term for e in net.stores[1].entries]


def test_batching_respects_max_entries_and_max_bytes() -> None:
    net = Net([1, 2], max_msg_entries=4, max_msg_bytes=250)
    net.elect(1)
    net.sent.clear()
    net.nodes[1].propose_many([b"a"] * 10)
    net.stabilize()
    sizes = [len(m.entries) for m in net.sent if isinstance(m, MsgApp) and m.entries]
    assert sizes == [4, 4, 2]
    net.sent.clear()
    net.nodes[1].propose_many([b"b" * 100] * 5)
    net.stabilize()
    sizes = [len(m.entries) for m in net.sent if isinstance(m, MsgApp) and m.entries]
    assert sizes == [2, 2, 1]  # 250 bytes fit two 100-byte entries


def test_flow_control_bounds_inflight_appends_and_resumes() -> None:
    net = Net([1, 2], max_msg_entries=1, max_inflight_msgs=3)
    net.elect(1)
    pr = net.nodes[1].status().progress[2]
    assert pr.state is ProgressState.REPLICATE
    net.filters.append(lambda m: isinstance(m, MsgAppResp | MsgHeartbeatResp) and m.src == 2)
    net.sent.clear()
    for k in range(10):
        net.nodes[1].propose(b"%d" % k)
        net.stabilize()
    sent = [m for m in net.sent if isinstance(m, MsgApp) and m.entries]
    assert len(sent) == 3  # the window is full: no more appends until acknowledgements
    assert net.stores[2].entries[-1].data == b"2"
    net.heal()
    net.tick(1, 2)  # heartbeat round trips let the stream resume
    assert net.apps[2].applied[-10:] == [b"%d" % k for k in range(10)]


def test_probe_state_sends_one_append_until_answered() -> None:
    net = Net([1, 2, 3])
    net.filters.append(lambda m: isinstance(m, MsgAppResp))
    net.elect(1)
    for k in range(5):
        net.nodes[1].propose(b"%d" % k)
        net.stabilize()
    to_2 = [m for m in net.sent if isinstance(m, MsgApp) and m.dst == 2]
    assert len(to_2) == 1
    assert net.nodes[1].status().progress[2].state is ProgressState.PROBE


def test_restart_from_persisted_state_keeps_log_and_term() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    for k in range(3):
        net.propose(b"%d" % k)
    before = {i: (net.nodes[i].term, net.nodes[i].last_index) for i in (1, 2, 3)}
    for i in (1, 2, 3):
        net.restart(i)
    assert {i: (net.nodes[i].term, net.nodes[i].last_index) for i in (1, 2, 3)} == before
    assert all(r.role is StateRole.FOLLOWER for r in net.nodes.values())
    net.elect(2)
    net.propose(b"3")
    for i in (1, 2, 3):  # committed entries are handed out again to the fresh state machine
        assert net.apps[i].applied == [b"0", b"1", b"2", b"3"]


def test_config_applied_skips_already_applied_entries() -> None:
    net = Net([1])
    net.elect(1)
    for k in range(4):
        net.propose(b"%d" % k)
    persisted = net.stores[1].persisted()
    node = RaftNode(Config(id=1, applied=4), random.Random(0), persisted)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [5, 6]


def test_ready_must_be_advanced_before_the_next_one() -> None:
    net = Net([1])
    node = net.nodes[1]
    node.ready()
    with pytest.raises(RaftUsageError):
        node.ready()


def test_committed_entries_are_handed_out_once_in_order() -> None:
    net = Net([1, 2, 3])
    net.elect(3)
    for k in range(20):
        net.nodes[3].propose(b"%d" % k)
        if k % 3 == 0:
            net.stabilize()
    net.stabilize()
    net.tick_all(2)
    for i in (1, 2, 3):
        assert net.apps[i].applied == [b"%d" % k for k in range(20)]


def test_noncontiguous_persisted_entries_are_rejected() -> None:
    bad = with_entries(1, HardState(1, 0, 1), entries(1, 1), CONF3)
    broken = bad.entries[:1] + bad.entries[2:]
    with pytest.raises(RaftUsageError):
        RaftNode(Config(id=1), random.Random(0), type(bad)(bad.hard_state, None, broken))


def test_entry_type_of_new_term_marker_is_noop() -> None:
    net = Net([1, 2])
    net.elect(2)
    last = net.stores[2].entries[-1]
    assert last == Entry(net.nodes[2].term, 2, EntryType.NOOP, b"")


def test_flow_control_recovers_when_appends_filling_the_window_are_lost() -> None:
    """Regression (sim FINDINGS #1): lost appends with a full window must not stall forever."""
    net = Net([1, 2, 3], max_inflight_msgs=1, max_msg_entries=1)
    net.elect(1)
    net.filters.append(lambda m: isinstance(m, MsgApp) and m.dst == 2 and bool(m.entries))
    for k in range(4):
        net.nodes[1].propose(b"%d" % k)
        net.stabilize()
    assert net.nodes[1].status().progress[2].match < net.nodes[1].last_index
    net.heal()
    net.tick(1, 3)  # heartbeat responses free the window and re-probe
    assert net.apps[2].applied == [b"0", b"1", b"2", b"3"]


def test_append_below_commit_never_rewrites_committed_entries() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(b"a")
    follower = net.nodes[2]
    forged = Entry(follower.term, 3, EntryType.NORMAL, b"forged")
    follower.step(MsgApp(1, 2, follower.term, 2, 2, (forged,), 3))
    rd = follower.ready()
    assert rd.entries == ()
    assert rd.messages == (MsgAppResp(2, 1, follower.term, index=3),)  # "I have up to 3"
    follower.advance(rd)
    assert net.stores[2].entries[-1].data == b"a"


def test_max_apply_entries_bounds_each_ready() -> None:
    net = Net([1], max_apply_entries=3)
    net.elect(1)
    node = net.nodes[1]
    node.propose_many([b"%d" % k for k in range(7)])
    sizes = []
    while node.has_ready():
        rd = node.ready()
        net.stores[1].save(rd)
        sizes.append(len(rd.committed_entries))
        node.advance(rd)
    assert sizes == [3, 3, 1]


def test_advance_trusts_its_own_record_of_the_handed_out_hard_state() -> None:
    import dataclasses

    net = Net([1, 2, 3], pre_vote=False)
    node = net.nodes[2]
    node.step(MsgVote(1, 2, 9, 1, 1))
    rd = node.ready()
    assert rd.hard_state is not None
    altered = dataclasses.replace(rd, hard_state=dataclasses.replace(rd.hard_state, vote=0))
    node.advance(altered)
    assert not node.has_ready()  # no endless re-offer of the same hard state
