"""Appends that only move a replicating follower's commit index are not answered.

The leader learns nothing from such an answer (no flow-control slot, no new match), so it
asks for none (``MsgApp.ack=False``); everything it does need still gets an answer: appends
with entries, probes, mismatches (an earlier append was lost) and heartbeat-driven retries.
"""

from __future__ import annotations

from _rafttest import Net

from microtrio.raft import (
    MsgApp,
    MsgAppResp,
    ProgressState,
    decode_message,
    encode_message,
)


def _commit_only(net: Net) -> list[MsgApp]:
    return [m for m in net.sent if isinstance(m, MsgApp) and not m.entries and m.src == 1]


def test_a_commit_only_append_to_a_replicating_follower_is_not_answered() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    for node in (2, 3):
        assert net.nodes[1].status().progress[node].state is ProgressState.REPLICATE
    net.sent.clear()
    net.nodes[1].propose(b"x")
    net.stabilize()
    with_entries = [m for m in net.sent if isinstance(m, MsgApp) and m.entries]
    commits = _commit_only(net)
    answers = [m for m in net.sent if isinstance(m, MsgAppResp)]
    assert len(with_entries) == 2
    assert len(commits) == 2 and all(not m.ack for m in commits)
    # one answer per append with entries; none for the commit broadcast (the old code
    # answered all four)
    assert len(answers) == 2
    assert all(app.applied[-1] == b"x" for app in net.apps.values())
    assert all(n.committed == net.nodes[1].committed for n in net.nodes.values())


def test_probes_still_ask_for_an_answer() -> None:
    net = Net([1, 2, 3])
    net.filters.append(lambda m: isinstance(m, MsgAppResp) and m.src == 3)
    net.elect(1)
    assert net.nodes[1].status().progress[3].state is ProgressState.PROBE
    net.sent.clear()
    net.nodes[1].propose(b"x")
    net.stabilize()
    net.heal()
    net.tick(1, 2)  # heartbeat answer: the probe to 3 goes again, empty or not, and is answered
    probes = [m for m in net.sent if isinstance(m, MsgApp) and m.dst == 3]
    assert probes and all(m.ack for m in probes)
    assert net.nodes[1].status().progress[3].state is ProgressState.REPLICATE
    assert net.apps[3].applied[-1] == b"x"


def test_a_commit_only_append_after_a_lost_append_is_rejected_and_answered() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    lost = {"done": False}

    def drop_first_entries_to_3(m: object) -> bool:
        if isinstance(m, MsgApp) and m.dst == 3 and m.entries and not lost["done"]:
            lost["done"] = True
            return True
        return False

    net.filters.append(drop_first_entries_to_3)
    net.sent.clear()
    net.nodes[1].propose(b"x")
    net.stabilize()
    assert lost["done"]
    rejects = [m for m in net.sent if isinstance(m, MsgAppResp) and m.src == 3 and m.reject]
    # the commit-only append (ack=False) does not match on 3: its mismatch is answered, so
    # the leader resends at once instead of waiting for a heartbeat
    assert rejects
    assert net.apps[3].applied[-1] == b"x"


def test_no_ack_appends_survive_the_codec() -> None:
    app = MsgApp(1, 2, 3, 4, 5, (), 6, ack=False)
    raw = encode_message(app)
    assert raw[1] == 14
    assert decode_message(raw) == app
    plain = MsgApp(1, 2, 3, 4, 5, (), 6)
    assert encode_message(plain)[1] == 1 and decode_message(encode_message(plain)).ack
