"""A small deterministic in-memory network for the Raft core unit tests (as etcd's rafttest).

Each node has a fake durable store filled strictly from its Ready batches; messages go into one
FIFO queue and are delivered by :meth:`Net.stabilize` unless a link is cut or a filter drops them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgApp,
    MsgPreVote,
    MsgVote,
    MsgVoteResp,
    PersistedState,
    RaftNode,
    ReadState,
    Ready,
    Snapshot,
    StateRole,
    bootstrap_state,
)


@dataclass
class Store:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            if self.entries:
                del self.entries[max(0, first - self.entries[0].index) :]
            if self.entries:
                assert self.entries[-1].index + 1 == first, "gap in persisted log"
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            assert rd.hard_state.term >= self.hard_state.term
            self.hard_state = rd.hard_state


@dataclass
class App:
    """The replicated state machine: the list of applied NORMAL entry payloads."""

    applied: list[bytes] = field(default_factory=list)
    applied_index: int = 0
    snapshot_installs: int = 0
    read_states: list[ReadState] = field(default_factory=list)


Filter = Callable[[Message], bool]


class Net:
    def __init__(
        self,
        ids: Iterable[int],
        *,
        voters: Iterable[int] | None = None,
        seed: int = 0,
        **cfg: int | bool,
    ) -> None:
        ids = list(ids)
        conf = ConfState.of_voters(ids if voters is None else voters)
        self.rng = random.Random(seed)
        self.cfg = cfg
        self.nodes: dict[int, RaftNode] = {}
        self.stores: dict[int, Store] = {}
        self.apps: dict[int, App] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.filters: list[Filter] = []
        #: rewrites (or drops, returning None) each delivered message
        self.mangle: Callable[[Message], Message | None] | None = None
        self.sent: list[Message] = []
        for i in ids:
            store = Store()
            boot = bootstrap_state(conf)
            store.hard_state, store.entries = boot.hard_state, list(boot.entries)
            self.stores[i] = store
            self.apps[i] = App()
            self.nodes[i] = RaftNode(self.config(i), random.Random(seed * 1000 + i), boot)

    def config(self, node: int, **extra: int | bool) -> Config:
        return Config(id=node, **{**self.cfg, **extra})  # type: ignore[arg-type]

    def add_empty(self, node: int) -> RaftNode:
        """A brand-new member with empty state (it learns everything from the leader)."""
        self.stores[node] = Store()
        self.apps[node] = App()
        self.nodes[node] = RaftNode(self.config(node), random.Random(node), None)
        return self.nodes[node]

    def load(self, node: int, persisted: PersistedState) -> RaftNode:
        """Replace ``node`` by one started from ``persisted`` (also written to its store)."""
        self.stores[node] = Store(persisted.hard_state, persisted.snapshot, list(persisted.entries))
        self.apps[node] = App()
        self.nodes[node] = RaftNode(self.config(node), random.Random(node + 3), persisted)
        return self.nodes[node]

    def restart(self, node: int) -> RaftNode:
        """Crash and restart ``node`` from its durable store (volatile app state rebuilt)."""
        store = self.stores[node]
        self.queue = [m for m in self.queue if m.dst != node]
        self.apps[node] = App()
        if store.snapshot is not None:
            self.apps[node].applied_index = store.snapshot.meta.index
            self.apps[node].applied = list(decode_payloads(store.snapshot.data))
        self.nodes[node] = RaftNode(self.config(node), random.Random(node + 7), store.persisted())
        return self.nodes[node]

    # -- driving ------------------------------------------------------------------------------

    def process(self, node: int) -> bool:
        """Handle one Ready of ``node``; False when it had nothing."""
        raft = self.nodes[node]
        if not raft.has_ready():
            return False
        rd = raft.ready()
        store, app = self.stores[node], self.apps[node]
        store.save(rd)
        if rd.snapshot is not None:
            app.applied = list(decode_payloads(rd.snapshot.data))
            app.applied_index = rd.snapshot.meta.index
            app.snapshot_installs += 1
        check_durable_before_send(store, rd)
        for m in rd.messages:
            self.sent.append(m)
            self.queue.append(m)
        for e in rd.committed_entries:
            assert e.index == app.applied_index + 1, (node, e.index, app.applied_index)
            app.applied_index = e.index
            if e.type is EntryType.NORMAL:
                app.applied.append(e.data)
        app.read_states.extend(rd.read_states)
        raft.advance(rd)
        return True

    def deliver_one(self) -> bool:
        if not self.queue:
            return False
        m = self.queue.pop(0)
        if (m.src, m.dst) in self.cut or any(f(m) for f in self.filters):
            return True
        if self.mangle is not None:
            changed = self.mangle(m)
            if changed is None:
                return True
            m = changed
        target = self.nodes.get(m.dst)
        if target is not None:
            target.step(m)
        return True

    def stabilize(self, limit: int = 100_000) -> None:
        """Process Readies and deliver messages until nothing is left."""
        for _ in range(limit):
            busy = False
            for node in list(self.nodes):
                while self.process(node):
                    busy = True
            if self.deliver_one():
                busy = True
            if not busy:
                return
        raise AssertionError("network did not stabilize")

    def tick(self, node: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[node].tick()
            self.stabilize()

    def tick_all(self, n: int = 1, skip: Iterable[int] = ()) -> None:
        skip = set(skip)
        for _ in range(n):
            for i, raft in self.nodes.items():
                if i not in skip:
                    raft.tick()
            self.stabilize()

    def campaign(self, node: int) -> None:
        """Tick only ``node`` until it asks for (pre-)votes, then let the election run."""
        raft = self.nodes[node]
        for _ in range(raft.config.election_tick * 3):
            raft.tick()
            mark = len(self.sent)
            while self.process(node):
                pass
            if raft.role is StateRole.LEADER or any(
                isinstance(m, MsgVote | MsgPreVote) for m in self.sent[mark:]
            ):
                break
        self.stabilize()

    def isolate(self, node: int) -> None:
        for other in self.nodes:
            if other != node:
                self.cut |= {(node, other), (other, node)}

    def heal(self) -> None:
        self.cut.clear()
        self.filters.clear()
        self.mangle = None

    def elect(self, node: int, attempts: int = 5) -> None:
        """Campaign until ``node`` leads (a first try may only teach it a newer term)."""
        for _ in range(attempts):
            self.campaign(node)
            if self.nodes[node].role is StateRole.LEADER:
                return
        raise AssertionError(f"node {node} could not win an election")

    def compact(self, node: int) -> Snapshot:
        """The state machine of ``node`` snapshots at its applied index; storage follows."""
        app, raft, store = self.apps[node], self.nodes[node], self.stores[node]
        snap = raft.compact(app.applied_index, encode_payloads(app.applied))
        store.snapshot = snap
        store.entries = [e for e in store.entries if e.index >= raft.first_index]
        return snap

    def leader(self) -> int:
        leaders = [i for i, r in self.nodes.items() if r.role is StateRole.LEADER]
        top = max((self.nodes[i].term for i in leaders), default=0)
        current = [i for i in leaders if self.nodes[i].term == top]
        return current[0] if current else 0

    def propose(self, data: bytes) -> int:
        index = self.nodes[self.leader()].propose(data)
        self.stabilize()
        return index


def check_durable_before_send(store: Store, rd: Ready) -> None:
    """The Ready contract: what a message promises is durable once the Ready is persisted."""

    def durable_term(index: int) -> int | None:
        if store.snapshot is not None and index == store.snapshot.meta.index:
            return store.snapshot.meta.term
        if store.entries:
            off = index - store.entries[0].index
            if 0 <= off < len(store.entries):
                return store.entries[off].term
        return None

    hs = store.hard_state
    for m in rd.messages:
        if isinstance(m, MsgApp) and m.entries:
            last = m.entries[-1]
            assert durable_term(last.index) == last.term, f"sent {last} before persisting it"
        if isinstance(m, MsgVoteResp) and not m.reject:
            assert (hs.term, hs.vote) == (m.term, m.dst), "vote sent before it was persisted"
    if rd.committed_entries:
        last = rd.committed_entries[-1]
        snap = store.snapshot.meta.index if store.snapshot else 0
        assert last.index <= snap or durable_term(last.index) == last.term
        assert last.index <= hs.commit, "applied beyond the durable commit index"


def encode_payloads(items: Iterable[bytes]) -> bytes:
    return b"\n".join(items)


def decode_payloads(data: bytes) -> list[bytes]:
    return data.split(b"\n") if data else []


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + k, EntryType.NORMAL, b"") for k, t in enumerate(terms)]


def with_entries(node: int, hs: HardState, log: list[Entry], conf: ConfState) -> PersistedState:
    """A persisted state whose log is the bootstrap entry followed by ``log``."""
    boot = bootstrap_state(conf)
    shifted = [replace(e, index=e.index + 1) for e in log]
    return PersistedState(hs, None, boot.entries + tuple(shifted))
