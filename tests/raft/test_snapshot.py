"""Snapshots and compaction (paper section 7): chunked InstallSnapshot, resume, restart when
the leader's snapshot changes, trailing log entries, restart from a snapshot."""

from __future__ import annotations

import pytest
from _rafttest import Net, decode_payloads

from microtrio.raft import (
    Message,
    MsgApp,
    MsgSnap,
    MsgSnapResp,
    ProgressState,
    RaftUsageError,
)


def lagging_cluster(chunk: int = 16, trailing: int = 2, n: int = 30) -> Net:
    net = Net([1, 2, 3], snapshot_chunk_size=chunk, snapshot_trailing=trailing)
    net.elect(1)
    net.isolate(3)
    for k in range(n):
        net.propose(b"v%02d" % k)
    net.compact(1)
    return net


def snaps(net: Net, dst: int = 3) -> list[MsgSnap]:
    return [m for m in net.sent if isinstance(m, MsgSnap) and m.dst == dst]


def test_compaction_keeps_trailing_entries_and_snapshot_meta() -> None:
    net = lagging_cluster(trailing=5)
    node = net.nodes[1]
    applied = net.apps[1].applied_index
    assert node.first_index == applied - 5 + 1
    snap = net.stores[1].snapshot
    assert snap is not None and snap.meta.index == applied and snap.meta.term == node.term
    assert snap.meta.conf.voters == {1, 2, 3}
    assert decode_payloads(snap.data) == net.apps[1].applied


def test_follower_within_trailing_window_catches_up_by_log() -> None:
    net = Net([1, 2, 3], snapshot_trailing=50)
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(b"%d" % k)
    net.compact(1)
    net.heal()
    net.tick(1, 2)
    assert not snaps(net)
    assert net.apps[3].applied == net.apps[1].applied


def test_lagging_follower_gets_snapshot_in_chunks() -> None:
    net = lagging_cluster(chunk=16)
    net.heal()
    net.tick(1, 2)
    snap = net.stores[1].snapshot
    assert snap is not None
    chunks = snaps(net)
    expected = -(-len(snap.data) // 16)
    assert len(chunks) == expected >= 5
    assert [m.offset for m in chunks] == [16 * k for k in range(expected)]
    assert [m.done for m in chunks] == [False] * (expected - 1) + [True]
    assert all(len(m.data) <= 16 for m in chunks)
    assert net.apps[3].snapshot_installs == 1
    assert net.stores[3].snapshot == snap
    net.propose(b"after")
    assert net.apps[3].applied == net.apps[1].applied
    assert net.nodes[1].status().progress[3].state is ProgressState.REPLICATE


def test_lost_chunk_is_resent_from_the_acknowledged_offset() -> None:
    net = lagging_cluster(chunk=16)
    dropped: list[int] = []

    def drop_third_once(m: Message) -> bool:
        if isinstance(m, MsgSnap) and m.offset == 32 and not dropped:
            dropped.append(m.offset)
            return True
        return False

    net.heal()
    net.filters.append(drop_third_once)
    net.tick(1, 1)
    assert dropped == [32]
    assert [m.offset for m in snaps(net)] == [0, 16, 32]
    net.tick(1, 2)  # heartbeat response: resume at the acknowledged offset, not at 0
    offsets = [m.offset for m in snaps(net)]
    assert offsets[:4] == [0, 16, 32, 32]
    assert offsets.count(0) == 1
    assert net.apps[3].applied == net.apps[1].applied


def test_follower_answers_out_of_order_chunk_with_its_offset() -> None:
    net = lagging_cluster(chunk=16)
    net.heal()
    first = None

    def hold_first(m: Message) -> bool:
        nonlocal first
        if isinstance(m, MsgSnap) and m.offset == 0 and first is None:
            first = m
            return True
        return False

    net.filters.append(hold_first)
    net.tick(1, 1)
    assert first is not None
    follower = net.nodes[3]
    follower.step(MsgSnap(first.src, 3, first.term, first.meta, 16, first.total, b"x" * 16, False))
    rd = follower.ready()
    follower.advance(rd)
    (resp,) = [m for m in rd.messages if isinstance(m, MsgSnapResp)]
    assert (resp.offset, resp.done) == (0, False)


def test_transfer_restarts_when_leader_snapshot_changes() -> None:
    net = lagging_cluster(chunk=16)
    net.heal()
    net.filters.append(lambda m: isinstance(m, MsgSnapResp) and m.offset >= 32)
    net.tick(1, 1)
    old = net.stores[1].snapshot
    assert old is not None and [m.offset for m in snaps(net)] == [0, 16]
    # Meanwhile the leader moves on and takes a newer snapshot.
    net.filters.append(lambda m: isinstance(m, MsgApp) and m.dst == 3)
    net.propose(b"newer")
    new = net.compact(1)
    assert new.meta.index > old.meta.index
    net.heal()
    net.tick(1, 2)
    chunks = snaps(net)
    restarted = [m for m in chunks if m.meta.index == new.meta.index]
    assert restarted and restarted[0].offset == 0
    assert net.stores[3].snapshot == new
    assert net.apps[3].applied == net.apps[1].applied


def test_restart_from_snapshot_and_trailing_entries() -> None:
    net = lagging_cluster(trailing=3)
    net.heal()
    net.tick(1, 2)
    for i in (1, 2, 3):
        net.restart(i)
    net.elect(2)
    net.propose(b"z")
    for i in (1, 2, 3):
        assert net.apps[i].applied[-2:] == [b"v29", b"z"]
        assert net.apps[i].applied == net.apps[2].applied


def test_compact_refuses_unapplied_or_old_index() -> None:
    net = lagging_cluster()
    node = net.nodes[1]
    with pytest.raises(RaftUsageError):
        node.compact(node.applied + 1, b"")
    with pytest.raises(RaftUsageError):
        node.compact(node.applied, b"")  # not newer than the current snapshot


def test_follower_with_snapshot_covered_by_commit_ignores_it() -> None:
    net = lagging_cluster()
    net.heal()
    net.tick(1, 2)
    follower = net.nodes[2]
    snap = net.stores[1].snapshot
    assert snap is not None
    follower.step(MsgSnap(1, 2, follower.term, snap.meta, 0, len(snap.data), snap.data, True))
    rd = follower.ready()
    assert rd.snapshot is None
    (resp,) = rd.messages
    assert isinstance(resp, MsgSnapResp) and resp.done and resp.index == follower.committed


def test_duplicated_chunks_and_acks_do_not_multiply_the_transfer() -> None:
    net = lagging_cluster(chunk=16)
    net.heal()
    seen: set[int] = set()

    def duplicate(m: Message) -> bool:
        if isinstance(m, MsgSnap | MsgSnapResp) and id(m) not in seen:
            seen.add(id(m))
            net.queue.append(m)  # deliver it twice
        return False

    net.filters.append(duplicate)
    net.tick(1, 1)
    snap = net.stores[1].snapshot
    assert snap is not None
    assert len(snaps(net)) == -(-len(snap.data) // 16)  # each chunk sent exactly once
    assert net.apps[3].snapshot_installs == 1
    assert net.apps[3].applied == net.apps[1].applied
