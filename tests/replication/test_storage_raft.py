"""LogStore driven by the real Raft core: Readys persisted, members restarted from disk."""

from __future__ import annotations

import random
from pathlib import Path

from microtrio._replication._storage import LogStore
from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    RaftNode,
    StateRole,
    bootstrap_state,
)

IDS = (1, 2, 3)
SEGMENT = 512  # small segments, so compaction and truncation cross files


class Cluster:
    """Three members in one process; messages go through a queue; each persists to disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stores: dict[int, LogStore] = {}
        self.nodes: dict[int, RaftNode] = {}
        # Each member's state machine: what it applied, kept across restarts (as the
        # database is), and every committed entry seen anywhere (a safety check).
        self.applied: dict[int, list[Entry]] = {i: [] for i in IDS}
        self.committed: dict[int, Entry] = {}
        self.down: set[int] = set()
        self.queue: list[Message] = []
        conf = ConfState.of_voters(IDS)
        for i in IDS:
            store = LogStore(root / str(i), segment_size=SEGMENT)
            store.load()
            boot = bootstrap_state(conf)
            store.persist(boot.hard_state, boot.entries, boot.snapshot)
            store.close()
            self.start(i)

    def config(self, i: int) -> Config:
        applied = self.applied[i][-1].index if self.applied[i] else 0
        return Config(id=i, snapshot_trailing=0, applied=applied)

    def start(self, i: int) -> None:
        """(Re)start member ``i`` from what its store loads."""
        store = LogStore(self.root / str(i), segment_size=SEGMENT)
        persisted = store.load()
        self.stores[i] = store
        self.nodes[i] = RaftNode(self.config(i), random.Random(i), persisted)

    def stop(self, i: int) -> None:
        self.stores[i].close()
        del self.nodes[i]

    def settle(self) -> None:
        """Handle Readys and deliver messages until nothing moves."""
        for _ in range(10_000):
            moved = False
            for i, node in list(self.nodes.items()):
                if node.has_ready():
                    moved = True
                    rd = node.ready()
                    self.stores[i].persist(rd.hard_state, rd.entries, rd.snapshot)
                    self.queue.extend(rd.messages)
                    if rd.snapshot is not None:  # restore: the state up to the snapshot
                        top = rd.snapshot.meta.index
                        self.applied[i] = [self.committed[k] for k in range(1, top + 1)]
                    for entry in rd.committed_entries:
                        assert self.committed.setdefault(entry.index, entry) == entry
                        self.applied[i].append(entry)
                    node.advance(rd)
            queue, self.queue = self.queue, []
            for msg in queue:
                moved = True
                if msg.dst in self.nodes and msg.dst not in self.down and msg.src not in self.down:
                    self.nodes[msg.dst].step(msg)
            if not moved:
                return
        raise AssertionError("cluster did not settle")

    def tick(self, rounds: int) -> None:
        for _ in range(rounds):
            for node in self.nodes.values():
                node.tick()
            self.settle()

    def leader(self) -> RaftNode:
        self.tick(1)
        for _ in range(200):
            leaders = [
                n
                for i, n in self.nodes.items()
                if n.role is StateRole.LEADER and i not in self.down
            ]
            if leaders:
                return leaders[0]
            self.tick(1)
        raise AssertionError("no leader elected")

    def propose(self, count: int, tag: str) -> None:
        leader = self.leader()
        for k in range(count):
            leader.propose(f"{tag}-{k}".encode())
            self.settle()


def normal(entries: list[Entry]) -> list[bytes]:
    return [e.data for e in entries if e.type is EntryType.NORMAL]


def test_cluster_survives_restarts_from_disk(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.propose(30, "a")
    expected = [f"a-{k}".encode() for k in range(30)]
    assert all(normal(cluster.applied[i]) == expected for i in IDS)

    # Everyone restarts from disk; nothing committed is lost and the cluster carries on.
    for i in IDS:
        cluster.stop(i)
    for i in IDS:
        cluster.start(i)
        assert cluster.stores[i].statistics().hard_state.commit >= 31
    cluster.propose(10, "b")
    cluster.tick(2)  # the followers learn the last commit index
    expected += [f"b-{k}".encode() for k in range(10)]
    assert all(normal(cluster.applied[i]) == expected for i in IDS)


def test_lagging_member_installs_a_snapshot_and_restarts_from_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.propose(5, "a")
    leader = cluster.leader()
    lagging = next(i for i in IDS if i != leader.id)
    cluster.down.add(lagging)
    cluster.propose(40, "b")

    # The leader snapshots its state machine and compacts its durable log behind it.
    applied = cluster.applied[leader.id][-1].index
    snap = leader.compact(applied, b"state-at-%d" % applied)
    store = cluster.stores[leader.id]
    segments_before = store.statistics().segments
    store.save_snapshot(snap)
    store.compact_to(leader.first_index - 1)
    assert store.statistics().segments < segments_before

    cluster.down.discard(lagging)
    cluster.tick(30)
    lagging_store = cluster.stores[lagging]
    assert lagging_store.statistics().snapshot_index == applied
    loaded_snapshot = lagging_store.load_snapshot()
    assert loaded_snapshot is not None and loaded_snapshot.data == snap.data

    cluster.propose(3, "c")
    cluster.stop(lagging)
    cluster.start(lagging)
    persisted_commit = cluster.stores[lagging].statistics().hard_state.commit
    assert persisted_commit >= applied + 3
    cluster.propose(2, "d")
    cluster.tick(2)
    everything = normal([cluster.committed[k] for k in sorted(cluster.committed)])
    assert everything[-2:] == [b"d-0", b"d-1"]
    assert normal(cluster.applied[lagging]) == everything
