"""One seeded schedule: faults, membership changes and clients, then healing and the checks.

Everything random comes from one ``random.Random(seed)``, so a seed replays exactly (given
the same core code). A schedule has a fault phase (``params.ticks`` ticks of random events
while clients run) and a heal phase (the network is repaired and crashed members restarted;
a leader must then be elected and a proposal committed within ``params.heal_ticks``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from microtrio.raft import (
    Config,
    ConfState,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    RaftUsageError,
    Role,
    bootstrap_state,
)
from microtrio.testing._linearizability import (
    Append,
    Cas,
    ListModel,
    Operation,
    Read,
    RegisterModel,
    Verdict,
    Write,
    check_linearizability,
)

from ._checks import SafetyViolation
from ._cluster import Cluster, NodeFactory, PendingOp, SimNode
from ._machine import Command
from ._network import Faults, Network

REGISTERS = ("r0", "r1")
LISTS = ("l0",)
#: Flow-control windows drawn per node (a window of 1 found FINDINGS.md finding 1).
INFLIGHT = (1, 8, 256)


class LivenessViolation(AssertionError):
    """After healing, no leader was elected or no proposal committed in time."""


class HistoryViolation(AssertionError):
    """The client history is not linearizable, or an acknowledged write is missing."""


@dataclass(frozen=True, slots=True)
class SimParams:
    size: int = 3
    ticks: int = 150
    heal_ticks: int = 400
    clients: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 1
    factory: NodeFactory = RaftNode
    crashes: bool = True
    membership: bool = True
    partitions: bool = True
    transfers: bool = True
    compaction: bool = True
    message_faults: bool = True
    event_rate: float = 0.06
    client_timeout: int = 40
    snapshot_chunk_size: int = 48
    snapshot_trailing: int = 4
    #: Choices for each node's Config.max_msg_entries (1 widens partial-replication windows).
    msg_entries: tuple[int, ...] = (1, 4, 64)
    #: Weight of crashes among random events, relative to the other kinds.
    crash_weight: int = 2
    #: Rule-level checks (commit rule, durable promises). Off, only consequences are checked.
    rule_checks: bool = True


@dataclass(slots=True)
class SimResult:
    seed: int
    ticks: int = 0
    committed: int = 0
    acked: int = 0
    unknown: int = 0
    events: list[str] = field(default_factory=list)
    linearizability_steps: int = 0
    #: Keys whose history the checker could not decide within its step budget.
    unchecked_keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Client:
    id: int
    op: PendingOp | None = None
    node: SimNode | None = None
    started: int = 0  # tick
    call_time: int = 0  # history clock


class Schedule:
    def __init__(self, seed: int, params: SimParams) -> None:
        self.seed, self.p = seed, params
        self.rng = random.Random(seed)
        self.result = SimResult(seed)
        rng = self.rng
        faults = Faults()
        if params.message_faults:
            faults = Faults(
                loss=rng.choice((0.0, 0.02, 0.1, 0.25)),
                duplicate=rng.choice((0.0, 0.05, 0.2)),
                max_delay=rng.choice((0, 1, 3)),
            )
        self.faults = faults
        self.net = Network[Any](rng, faults)
        self.cluster = Cluster(rng, self._config, params.factory, self.net)
        self.cluster.rule_checks = params.rule_checks
        self.clients = [_Client(i + 1) for i in range(params.clients)]
        self.history: list[Operation] = []
        self.clock = 0  # history time: strictly increasing over every event
        self.next_op = 0
        self.next_node_id = params.size + 1
        boot = bootstrap_state(ConfState.of_voters(range(1, params.size + 1)))
        for i in range(1, params.size + 1):
            self.cluster.add_node(i, boot)

    def _config(self, node_id: int, applied: int) -> Config:
        p = self.p
        return Config(
            id=node_id,
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            max_msg_entries=self.rng.choice(p.msg_entries),
            max_inflight_msgs=self.rng.choice(INFLIGHT),
            max_apply_entries=self.rng.choice((0, 0, 2)),
            snapshot_chunk_size=p.snapshot_chunk_size,
            snapshot_trailing=p.snapshot_trailing,
            applied=applied,
        )

    def log(self, text: str) -> None:
        self.result.events.append(f"t={self.cluster.now} {text}")

    # --- the run --------------------------------------------------------------------------

    def run(self) -> SimResult:
        for _ in range(self.p.ticks):
            if self.rng.random() < self.p.event_rate:
                self.random_event()
            self.step_tick(clients=True)
        self.heal()
        self.check_history()
        self.result.ticks = self.cluster.now
        return self.result

    def step_tick(self, *, clients: bool) -> None:
        c = self.cluster
        c.now += 1
        if clients:
            self.drive_clients()
        nodes = [n for n in c.nodes.values() if n.up and not n.removed]
        self.rng.shuffle(nodes)
        for node in nodes:
            if self.rng.random() < 0.97:  # occasional skipped tick: clock drift
                c.tick(node)
        for _frm, _to, msg in self.net.due(c.now):
            c.deliver(msg)
        c.handle_all()
        self.collect_outcomes()
        self.reap_removed()

    # --- clients --------------------------------------------------------------------------

    def drive_clients(self) -> None:
        for cl in self.clients:
            if cl.op is not None:
                if self.cluster.now - cl.started > self.p.client_timeout:
                    self.give_up(cl)
                continue
            if self.rng.random() < 0.3:
                self.start_op(cl, self.random_command())

    def random_command(self) -> Command:
        self.next_op += 1
        op_id, r = self.next_op, self.rng.random()
        if r < 0.25:
            return Command(op_id, "w", self.rng.choice(REGISTERS), op_id)
        if r < 0.35:
            return Command(op_id, "cas", self.rng.choice(REGISTERS), op_id, self.guess())
        if r < 0.45:
            return Command(op_id, "r", self.rng.choice(REGISTERS))
        if r < 0.6:  # a linearizable read through ReadIndex, served by any member
            return Command(op_id, "ri", self.rng.choice(REGISTERS))
        if r < 0.85:
            return Command(op_id, "a", self.rng.choice(LISTS), op_id)
        return Command(op_id, "rl", self.rng.choice(LISTS))

    def guess(self) -> int | None:
        """A cas expectation that often matches: some value written recently, or None."""
        writes = [o for o in self.history[-8:] if isinstance(o.input, Write | Cas)]
        if not writes or self.rng.random() < 0.1:
            return None
        inp = self.rng.choice(writes).input
        value = inp.value if isinstance(inp, Write) else inp.new if isinstance(inp, Cas) else None
        return value if isinstance(value, int) else None

    def start_op(self, cl: _Client, cmd: Command) -> bool:
        c = self.cluster
        leader = c.leader()
        up = [n for n in c.nodes.values() if n.up and not n.removed]
        if not up:
            return False
        node = leader if leader is not None and self.rng.random() < 0.85 else self.rng.choice(up)
        assert node.raft is not None
        if cmd.kind == "ri":
            ctx = str(cmd.op_id).encode()
            try:
                node.raft.read_index(ctx)
            except NotLeaderError:
                return False
            self.clock += 1
            op = PendingOp(cl.id, cmd.op_id, -1, cmd)
            node.reads[ctx] = op
        else:
            try:
                index = node.raft.propose(cmd.encode())
            except (NotLeaderError, ProposalDroppedError):
                return False  # definitely not appended: no history entry
            self.clock += 1
            op = PendingOp(cl.id, cmd.op_id, index, cmd)
            node.pending[index] = op
        cl.op, cl.node, cl.started, cl.call_time = op, node, c.now, self.clock
        c.maybe_handle(node)
        return True

    def collect_outcomes(self) -> None:
        out = self.cluster.outcome
        by_op = {cl.op.op_id: cl for cl in self.clients if cl.op is not None}
        for op, result in out.acked:
            cl = by_op.get(op.op_id)
            if cl is not None:
                self.clock += 1
                self.record(cl, self.clock, result)
        for op in out.unknown:
            cl = by_op.get(op.op_id)
            if cl is not None:
                self.record(cl, None, None)
        out.acked.clear()
        out.unknown.clear()

    def give_up(self, cl: _Client) -> None:
        assert cl.op is not None and cl.node is not None
        node, op = cl.node, cl.op
        node.pending.pop(op.index, None)
        node.reads.pop(str(op.op_id).encode(), None)
        node.read_waits = [(i, o) for i, o in node.read_waits if o is not op]
        self.record(cl, None, None)

    def record(self, cl: _Client, ret: int | None, result: Any) -> None:
        assert cl.op is not None
        cmd = cl.op.command
        inp: object
        if cmd.kind == "w":
            inp = Write(cmd.value)
        elif cmd.kind == "cas":
            inp = Cas(cmd.expected, cmd.value)
        elif cmd.kind == "a":
            inp = Append(cmd.value)
        else:
            inp = Read()
        if ret is not None:
            self.result.acked += 1
        else:
            self.result.unknown += 1
        self.history.append(Operation(cl.call_time, ret, inp, result, cmd.key, cl.id))
        cl.op = cl.node = None

    # --- faults ---------------------------------------------------------------------------

    def random_event(self) -> None:
        p, c, rng = self.p, self.cluster, self.rng
        live = [n for n in c.nodes.values() if not n.removed]
        up = [n for n in live if n.up]
        down = [n for n in live if not n.up]
        choices: list[str] = []
        if p.crashes:
            choices += ["crash"] * (p.crash_weight if up else 0)
            choices += ["restart"] * (p.crash_weight + 1 if down else 0)
        if p.partitions:
            choices += ["partition", "heal", "heal"]
        if p.membership:
            choices += ["membership"] * 3
        if p.transfers:
            choices += ["transfer"]
        if p.compaction:
            choices += ["compact"] * 2
        if not choices:
            return
        kind = rng.choice(choices)
        if kind == "crash":
            leader = c.leader()
            node = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
            self.log(f"crash {node.id}")
            c.crash(node)
        elif kind == "restart":
            node = rng.choice(down)
            self.log(f"restart {node.id}")
            c.start(node)
        elif kind == "partition":
            self.partition([n.id for n in live])
        elif kind == "heal":
            self.log("heal network")
            self.net.heal()
        elif kind == "membership":
            self.membership_change()
        elif kind == "transfer":
            leader = c.leader()
            if leader is not None and leader.raft is not None:
                to = rng.choice(sorted(leader.raft.status().conf.voters))
                self.log(f"transfer leadership {leader.id} -> {to}")
                try:
                    leader.raft.transfer_leadership(to)
                except (NotLeaderError, ProposalDroppedError, RaftUsageError):
                    pass
        elif kind == "compact" and up:
            node = rng.choice(up)
            self.log(f"compact {node.id} at {node.sm.applied}")
            c.compact(node)

    def partition(self, ids: list[int]) -> None:
        rng = self.rng
        rng.shuffle(ids)
        shape = rng.randrange(4)
        leader = self.cluster.leader()
        if shape == 3 and leader is not None:
            self.log(f"isolate leader {leader.id}")
            self.net.isolate_groups([[leader.id], [i for i in ids if i != leader.id]])
        elif shape in (0, 3) or len(ids) < 3:
            cut = rng.randrange(1, max(2, len(ids)))
            self.log(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")
            self.net.isolate_groups([ids[:cut], ids[cut:]])
        elif shape == 1:
            a, b = ids[0], ids[1]
            self.log(f"one-way cut {a} -> {b}")
            self.net.cut_one_way(a, b)
        else:
            bridge, rest = ids[0], ids[1:]
            half = len(rest) // 2
            self.log(f"bridge {bridge} between {sorted(rest[:half])} and {sorted(rest[half:])}")
            self.net.bridge(rest[:half], rest[half:])

    def membership_change(self) -> None:
        c, rng, p = self.cluster, self.rng, self.p
        leader = c.leader()
        if leader is None or leader.raft is None:
            return
        conf = leader.raft.status().conf
        voters, standbys = sorted(conf.voters), sorted(conf.standbys)
        spares = sorted(conf.spares)
        options = ["add"] if len(conf.members()) < p.size + 2 else []
        if standbys:
            options += ["promote", "promote", "to-spare", "remove-standby"]
        if spares:
            options.append("from-spare")
        if len(voters) > max(2, p.size - 2):
            options += ["remove", "demote"]
        if not options:
            return
        kind = rng.choice(options)
        if kind == "add":
            node_id, role = self.next_node_id, Role.STANDBY
        elif kind == "promote":
            node_id, role = rng.choice(standbys), Role.VOTER
        elif kind == "demote":
            node_id, role = rng.choice(voters), Role.STANDBY
        elif kind == "to-spare":
            node_id, role = rng.choice(standbys), Role.SPARE
        elif kind == "from-spare":
            node_id, role = rng.choice(spares), Role.STANDBY
        elif kind == "remove-standby":
            node_id, role = rng.choice(standbys), None
        else:
            node_id, role = rng.choice(voters), None
        new = conf.with_role(node_id, role)
        try:
            leader.raft.propose_conf_change(new)
        except (NotLeaderError, ProposalDroppedError, RaftUsageError):
            return
        self.log(f"conf change via {leader.id}: {kind} {node_id} -> {sorted(new.voters)}")
        if kind == "add":
            self.next_node_id += 1
            c.add_node(node_id, None)
        c.maybe_handle(leader)

    def reap_removed(self) -> None:
        """A member that applied its own removal stops (and never comes back)."""
        for node in self.cluster.nodes.values():
            if not node.up or node.removed:
                continue
            member = node.sm.conf.role_of(node.id) is not None
            if member:
                node.joined = True
            elif node.joined:
                self.log(f"node {node.id} applied its removal; stopping it")
                self.cluster.crash(node)
                node.removed = True

    # --- healing and final checks ---------------------------------------------------------

    def heal(self) -> None:
        c = self.cluster
        self.net.heal()
        self.net.faults = Faults()
        for cl in self.clients:
            if cl.op is not None:
                self.give_up(cl)
        for node in c.nodes.values():
            if not node.up and not node.removed:
                c.start(node)
        self.log("healed; waiting for a leader and a commit")
        start = c.now
        final = [Command(0, "w", "probe", 0)]
        final += [Command(0, "r", k) for k in REGISTERS]
        final += [Command(0, "rl", k) for k in LISTS]
        cl = self.clients[0]
        while final:
            if c.now - start > self.p.heal_ticks:
                raise LivenessViolation(
                    f"no leader/commit within {self.p.heal_ticks} ticks after healing "
                    f"(leader={c.leader() and c.leader().id}, pending={final[0]!r})"  # type: ignore[union-attr]
                )
            if cl.op is None and c.leader() is not None:
                self.next_op += 1
                cmd = final[0]
                cmd = Command(self.next_op, cmd.kind, cmd.key, cmd.value)
                if self.start_op_on_leader(cl, cmd):
                    final.pop(0)
            self.step_tick(clients=False)
            if cl.op is not None and c.now - cl.started > self.p.heal_ticks // 4:
                retry = cl.op.command
                self.give_up(cl)
                final.insert(0, retry)
        while cl.op is not None:
            if c.now - start > self.p.heal_ticks:
                raise LivenessViolation("final read did not complete after healing")
            self.step_tick(clients=False)
        leader = c.leader()
        assert leader is not None
        c.checker.check_leader_log(
            leader.id, leader.term, leader.store.snapshot_index, c.log_map(leader)
        )
        self.result.committed = max(n.sm.applied for n in c.nodes.values() if n.up)

    def start_op_on_leader(self, cl: _Client, cmd: Command) -> bool:
        leader = self.cluster.leader()
        if leader is None or leader.raft is None:
            return False
        try:
            index = leader.raft.propose(cmd.encode())
        except (NotLeaderError, ProposalDroppedError):
            return False
        self.clock += 1
        op = PendingOp(cl.id, cmd.op_id, index, cmd)
        leader.pending[index] = op
        cl.op, cl.node, cl.started, cl.call_time = op, leader, self.cluster.now, self.clock
        return True

    def check_history(self) -> None:
        regs = [o for o in self.history if o.key in REGISTERS]
        lists = [o for o in self.history if o.key in LISTS]
        for ops, model in ((regs, RegisterModel()), (lists, ListModel())):
            res = check_linearizability(ops, model, max_steps=200_000)
            self.result.linearizability_steps += res.steps
            if res.verdict is Verdict.UNKNOWN:
                self.result.unchecked_keys.append(str(res.key))
            if res.verdict is Verdict.ILLEGAL:
                raise HistoryViolation(res.explanation)
        # Every acknowledged append is in the final list of every key.
        final = {o.key: o.output for o in lists if isinstance(o.input, Read) and o.ret}
        for o in lists:
            if isinstance(o.input, Append) and o.ret is not None:
                seen = final.get(o.key)
                if seen is not None and o.input.value not in seen:  # type: ignore[operator]
                    raise HistoryViolation(f"acknowledged append {o.input} lost from {o.key}")


def run_schedule(seed: int, params: SimParams | None = None) -> SimResult:
    """Run one schedule; raises SafetyViolation / LivenessViolation / HistoryViolation."""
    return Schedule(seed, params or SimParams()).run()


__all__ = [
    "HistoryViolation",
    "LivenessViolation",
    "SafetyViolation",
    "SimParams",
    "SimResult",
    "run_schedule",
]
