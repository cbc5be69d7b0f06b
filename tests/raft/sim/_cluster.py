"""Simulated members: a RaftNode, its disk, its state machine, and the Ready loop.

The Ready contract is modelled exactly: a Ready's snapshot, entries and hard state reach the
:class:`DurableStore` before its messages go onto the network, and committed entries are
applied after that. A crash discards the RaftNode and the state machine (and any Ready not
handled yet); a restart builds a new RaftNode from the store alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    Message,
    PersistedState,
    RaftNode,
    RaftUsageError,
    Ready,
    StateRole,
)

from ._checks import SafetyChecker, SafetyViolation
from ._machine import Command, DurableStore, KvMachine
from ._network import Network

NodeFactory = Callable[[Config, random.Random, PersistedState | None], RaftNode]


@dataclass(slots=True)
class PendingOp:
    """A client's proposal waiting for the proposing node to apply its index."""

    client: int
    op_id: int
    index: int
    command: Command


@dataclass(slots=True)
class SimNode:
    id: int
    store: DurableStore
    raft: RaftNode | None = None
    sm: KvMachine = field(default_factory=KvMachine)
    pending: dict[int, PendingOp] = field(default_factory=dict)  # index -> op
    reads: dict[bytes, PendingOp] = field(default_factory=dict)  # ReadIndex ctx -> op
    read_waits: list[tuple[int, PendingOp]] = field(default_factory=list)  # (read index, op)
    role: StateRole = StateRole.FOLLOWER
    leader_id: int = 0
    term: int = 0
    joined: bool = False  # has applied a configuration that includes it
    removed: bool = False

    @property
    def up(self) -> bool:
        return self.raft is not None


@dataclass(slots=True)
class Outcome:
    """What the cluster reports back to the clients."""

    acked: list[tuple[PendingOp, Any]] = field(default_factory=list)
    unknown: list[PendingOp] = field(default_factory=list)


@dataclass(slots=True)
class Cluster:
    rng: random.Random
    config: Callable[[int, int], Config]  # (node id, applied) -> Config
    factory: NodeFactory
    net: Network[Message]
    checker: SafetyChecker = field(default_factory=SafetyChecker)
    nodes: dict[int, SimNode] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=Outcome)
    now: int = 0
    #: Probability that a Ready is handled right after the step that produced it (else it waits
    #: for the end of the tick, so a crash may catch it unpersisted).
    eager_ready: float = 0.8
    #: Check the commit rule and durable promises directly (not only their consequences).
    rule_checks: bool = True

    # --- lifecycle ------------------------------------------------------------------------

    def add_node(self, node_id: int, persisted: PersistedState | None) -> SimNode:
        node = SimNode(node_id, DurableStore.from_persisted(persisted))
        self.nodes[node_id] = node
        self.start(node)
        return node

    def start(self, node: SimNode) -> None:
        assert node.raft is None
        snap = node.store.snapshot
        node.sm = KvMachine.restore(snap.data) if snap is not None else KvMachine()
        applied = node.sm.applied
        node.raft = self.factory(self.config(node.id, applied), self.rng, node.store.persisted())
        node.role, node.leader_id = StateRole.FOLLOWER, 0
        node.term = node.store.hard_state.term
        self.checker.node_restarted(node.id, applied)

    def crash(self, node: SimNode) -> None:
        node.raft = None
        self.net.drop_to(node.id)
        self.outcome.unknown.extend(node.pending.values())
        node.pending.clear()
        self.outcome.unknown.extend(node.reads.values())
        self.outcome.unknown.extend(op for _, op in node.read_waits)
        node.reads.clear()
        node.read_waits.clear()

    # --- driving --------------------------------------------------------------------------

    def tick(self, node: SimNode) -> None:
        assert node.raft is not None
        node.raft.tick()
        self.maybe_handle(node)

    def deliver(self, msg: Message) -> None:
        node = self.nodes.get(msg.dst)
        if node is None or node.raft is None or node.removed:
            return
        node.raft.step(msg)
        self.maybe_handle(node)

    def maybe_handle(self, node: SimNode) -> None:
        if self.rng.random() < self.eager_ready:
            self.handle_ready(node)

    def handle_all(self) -> None:
        for node in list(self.nodes.values()):
            self.handle_ready(node)

    def handle_ready(self, node: SimNode) -> None:
        while node.raft is not None and node.raft.has_ready():
            ready = node.raft.ready()
            self._handle(node, ready)
            # The node may have been removed by applying a conf change (raft cleared).
            if node.raft is not None:
                node.raft.advance(ready)

    def _handle(self, node: SimNode, rd: Ready) -> None:
        store, chk = node.store, self.checker
        soft = rd.soft_state
        # Was it already leading this term before this Ready? (Only then did it count.)
        led = node.role is StateRole.LEADER and node.term == store.hard_state.term
        node.role, node.leader_id = soft.role, soft.leader_id
        # 1. snapshot: persist and install.
        if rd.snapshot is not None:
            store.install_snapshot(rd.snapshot)
            node.sm = KvMachine.restore(rd.snapshot.data)
            chk.saw_snapshot_restore(node.id, rd.snapshot.meta.index)
            for index in [i for i in node.pending if i <= rd.snapshot.meta.index]:
                self.outcome.unknown.append(node.pending.pop(index))
        # 2. entries, then hard state.
        if rd.entries:
            prev = store.term_at(rd.entries[0].index - 1)
            store.append(rd.entries)
            chk.saw_log(node.id, prev, rd.entries)
        if rd.hard_state is not None:
            if (
                self.rule_checks
                and led
                and soft.role is StateRole.LEADER
                and rd.hard_state.term == node.term
            ):
                new = rd.hard_state.commit
                chk.saw_leader_commit(
                    node.id, rd.hard_state.term, store.hard_state.commit, new, store.term_at(new)
                )
            if rd.hard_state.term < store.hard_state.term:
                raise SafetyViolation(
                    f"node {node.id} term went back from {store.hard_state.term} "
                    f"to {rd.hard_state.term}"
                )
            store.hard_state = rd.hard_state
            node.term = rd.hard_state.term
        if soft.role is StateRole.LEADER:
            term = store.hard_state.term
            if chk.saw_leader(term, node.id):
                chk.check_leader_log(node.id, term, store.snapshot_index, self.log_map(node))
        # 3. messages, only now.
        durable_last = store.last_index()
        for msg in rd.messages:
            if self.rule_checks:
                chk.saw_send(node.id, msg, store.hard_state, durable_last)
            self.net.send(self.now, msg.src, msg.dst, msg)
        # 4. apply, then serve the reads whose read index is applied.
        for entry in rd.committed_entries:
            self._apply(node, entry)
        for rs in rd.read_states:
            op = node.reads.pop(rs.ctx, None)
            if op is not None:
                node.read_waits.append((rs.index, op))
        if node.read_waits:
            self._serve_reads(node)

    def _serve_reads(self, node: SimNode) -> None:
        waiting = []
        for index, op in node.read_waits:
            if node.sm.applied >= index:
                self.outcome.acked.append((op, node.sm.registers.get(op.command.key)))
            else:
                waiting.append((index, op))
        node.read_waits = waiting

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index <= node.sm.applied:
            raise SafetyViolation(
                f"node {node.id} was handed entry {entry.index} again (applied {node.sm.applied})"
            )
        self.checker.saw_apply(node.id, entry)
        result = node.sm.apply(entry)
        op = node.pending.pop(entry.index, None)
        if op is not None:
            if entry.data == op.command.encode():
                self.outcome.acked.append((op, result))
            else:
                self.outcome.unknown.append(op)  # another entry won that index

    # --- views ----------------------------------------------------------------------------

    @staticmethod
    def log_map(node: SimNode) -> dict[int, Entry]:
        return {e.index: e for e in node.store.entries}

    def compact(self, node: SimNode) -> None:
        """Let the state machine snapshot at its applied index (and the disk log shrink)."""
        assert node.raft is not None
        index = node.sm.applied
        if index <= node.store.snapshot_index or index <= node.raft.status().first_index:
            return
        try:
            snap = node.raft.compact(index, node.sm.snapshot_data())
        except RaftUsageError:
            return  # e.g. not newer than the node's current snapshot
        node.store.compact(snap)

    def leader(self) -> SimNode | None:
        """The up node that believes it leads with the highest term (None if none)."""
        best: SimNode | None = None
        for node in self.nodes.values():
            if node.up and not node.removed and node.role is StateRole.LEADER:
                if best is None or node.term > best.term:
                    best = node
        return best

    def conf(self) -> ConfState:
        """The newest membership any up node has applied."""
        best = max(
            (n for n in self.nodes.values() if n.up and not n.removed),
            key=lambda n: n.sm.applied,
            default=None,
        )
        return best.sm.conf if best is not None else ConfState()
