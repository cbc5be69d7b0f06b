"""The Raft driver: one task per member that turns a pure :class:`RaftNode` into a live one.

Theory of operation
-------------------

Everything that touches the :class:`~microtrio.raft.RaftNode` happens in the driver task
(:meth:`RaftDriver.run`). Other tasks talk to it through one bounded inbox channel:

* inbound peer traffic (the transport's receive loops put messages straight into the inbox,
  :meth:`Transport.deliver_to`, so a slow driver pushes back on the connections);
* local requests (propose, read index, membership change, leadership transfer, status),
  each carrying a :class:`Reply` the caller waits on (with its own deadline).

The loop takes one event (or wakes up for the next tick: ticks come from trio's clock
every ``tick_interval`` seconds, and a late loop never ticks twice in a row; or for the
deadline of held commit notifications), drains what else is queued, and then handles one
Ready in contract order:

1. persist snapshot, entries and hard state in one call of the storage thread (one group
   fsync for the entries) - :meth:`AsyncLogStore.persist`;
2. install a received snapshot into the state machine (``restore``);
3. only then send the messages (a leader's commit-only appends: after step 4, and held
   back a few milliseconds at most: the next append usually carries the same commit index,
   see :mod:`._commit_hold`);
4. apply the committed entries in order (``apply(index, data, term=...)``; no-op and
   configuration entries advance the index only; a follower lets its sender tasks write
   its acks first) and resolve whoever waits for them;
5. answer read-index requests, then ``advance``.

After advancing, when more than ``snapshot_threshold`` entries were applied since the last
snapshot, the driver takes the state machine's snapshot, hands it to ``node.compact`` and
writes it, then compacts the durable log behind what the node still keeps in memory.

Restart: storage is loaded (a torn tail is cut there), a snapshot newer than the state
machine is restored into it first, and the node is told the state machine's applied index
(``Config.applied``) so no entry is applied twice (the applier is idempotent as well).

Forwarded writes travel on the Raft channel itself (:mod:`._wire`): a follower sends
:class:`ForwardPropose` (a write batch) or :class:`ForwardExecute` (a statement request) to
the leader, which answers with the index and term it proposed at, or with the statement
reply once applied (:mod:`._forwarding`). Read points are batched by :mod:`._reads`; the
configuration and the state-machine seam are in :mod:`._driver_config`.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final

import trio

from .._errors import UnavailableError
from .._log import node_label
from .._nowait import put
from ..raft import (
    Config,
    ConfState,
    EntryType,
    Message,
    MsgApp,
    MsgReadIndex,
    MsgReadIndexResp,
    NotLeaderError,
    PersistedState,
    ProposalDroppedError,
    RaftNode,
    ReadState,
    Ready,
    Role,
    StateRole,
    Status,
    bootstrap_state,
)
from ._commit_hold import CommitHold, split_commit_only
from ._driver_config import DriverConfig, RemoteHandler, StateMachine
from ._forwarding import Forwarding
from ._reads import ReadIndexBatcher
from ._reply import Reply
from ._storage import AsyncLogStore
from ._transport import Transport
from ._wire import WIRE_CODEC, ExecuteResult, ForwardResult, Wire

__all__ = [
    "WIRE_CODEC",
    "DriverConfig",
    "RaftDriver",
    "StateMachine",
    "Wire",
]

logger = logging.getLogger("microtrio.replication.driver")

_T = TypeVar("_T")


# -- configuration and seams --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """A local request: ``action(node)`` runs in the driver task; its result is the reply."""

    action: Callable[[RaftNode], Any]
    reply: Reply[Any]


_Event = _Request | Wire  # a local request, or a message from a peer


@final
class _EntryWaiter:
    __slots__ = ("done", "term")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.term: int | None = None  # the applied entry's term; None = cannot tell


# -- the driver ---------------------------------------------------------------------------


@final
class RaftDriver:
    """Runs one member's Raft node (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        *,
        store: AsyncLogStore,
        state_machine: StateMachine,
        transport: Transport[Wire],
        config: DriverConfig | None = None,
        bootstrap: ConfState | None = None,
        rng: random.Random | None = None,
        name: str = "",
    ) -> None:
        if node_id <= 0:
            raise ValueError("node id must be positive")
        self.id = node_id
        self.config = config if config is not None else DriverConfig()
        self._store = store
        self._sm = state_machine
        self._transport = transport
        self._bootstrap = bootstrap
        self._rng = rng if rng is not None else random.Random()
        self._name = name or f"node-{node_id}"
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[_Event](
            self.config.inbox_size
        )
        self._node: RaftNode | None = None
        self._addresses: dict[int, str] = {}
        self._leader = 0
        self._role = StateRole.FOLLOWER
        self._term = 0
        self._commit = 0
        self._applied = 0
        self._changed = trio.Event()  # set and replaced whenever leader/applied changes
        self._recent: deque[int] = deque(maxlen=self.config.recent_terms)
        self._waiters: dict[int, list[_EntryWaiter]] = {}
        self._reads = ReadIndexBatcher(
            node_id,
            rng=self._rng,
            submit=self._submit_nowait,
            stopped=lambda: self._stopped,
            name=self._name,
        )
        self._forwarding = Forwarding(
            node_id,
            transport=transport,
            rng=self._rng,
            remote_limit=self.config.remote_limit,
            name=self._name,
            send=self._send,
        )
        delay = self.config.commit_notify_delay
        self._hold = CommitHold(delay) if delay > 0 else None
        self._snapshot_index = 0
        self._running = False
        self._stopped = False

    # -- queries (any task) --

    @property
    def leader_id(self) -> int:
        """The leader this member knows of (0 = none)."""
        return self._leader

    @property
    def is_leader(self) -> bool:
        return self._role is StateRole.LEADER

    @property
    def role(self) -> StateRole:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def running(self) -> bool:
        return self._running

    def address_of(self, node_id: int) -> str | None:
        return self._addresses.get(node_id)

    def set_address(self, node_id: int, address: str) -> None:
        """Record a member's core address (our own too); the transport dials peers there."""
        self._addresses[node_id] = address
        if node_id != self.id:
            self._transport.add_peer(node_id, address)

    def forget_address(self, node_id: int) -> None:
        self._addresses.pop(node_id, None)
        if node_id != self.id:
            self._transport.remove_peer(node_id)

    async def wait_changed(self) -> None:
        """Return after the next change of leader, role or applied index."""
        self._check_running()
        await self._changed.wait()

    async def wait_leader(self) -> int:
        """Wait until some leader is known; return its id (callers bound the wait)."""
        while not self._leader:
            self._check_running()
            await self._changed.wait()
        return self._leader

    async def wait_applied(self, index: int) -> None:
        """Wait until the local applied index reaches ``index``."""
        while self._applied < index:
            self._check_running()
            await self._changed.wait()

    async def wait_entry(self, index: int, term: int) -> bool | None:
        """Once entry ``index`` is applied here: True if it is the entry of ``term`` (ours),
        False if another entry was committed there, None if that cannot be told any more
        (the entry was covered by a snapshot, or the driver stopped)."""
        if index <= self._applied:
            return self._outcome(index, term)
        waiter = _EntryWaiter()
        self._waiters.setdefault(index, []).append(waiter)
        try:
            await waiter.done.wait()
        finally:
            waiters = self._waiters.get(index)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[index]
        return None if waiter.term is None else waiter.term == term

    def _outcome(self, index: int, term: int) -> bool | None:
        back = self._applied - index
        if back < len(self._recent):
            return self._recent[-1 - back] == term
        return None

    # -- requests (any task; processed by the driver task) --

    async def _call(self, action: Callable[[RaftNode], _T]) -> _T:
        self._check_running()
        reply: Reply[_T] = Reply()
        request = _Request(action, reply)
        # queued without a scheduler pass when there is room (a cancelled caller still
        # queues nothing); the wait for the reply is the checkpoint
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            await put(self._inbox_send, request)
        except trio.ClosedResourceError:
            raise UnavailableError(f"{self._name}: raft driver stopped") from None
        return await reply.wait()

    def _stopped_error(self) -> UnavailableError:
        return UnavailableError(f"{self._name}: raft driver stopped")

    def _check_running(self) -> None:
        if self._stopped:
            raise UnavailableError(f"{self._name}: raft driver stopped")

    async def propose(self, data: bytes) -> tuple[int, int]:
        """Propose on this member (must lead): (index, term) of the new entry.

        Raises :class:`~microtrio.raft.NotLeaderError` / ``ProposalDroppedError``."""
        return await self._call(lambda node: (node.propose(data), node.term))

    def _submit_nowait(self, action: Callable[[RaftNode], None]) -> None:
        self._inbox_send.send_nowait(_Request(action, Reply()))

    async def forward(self, leader: int, data: bytes) -> ForwardResult:
        """Send ``data`` to ``leader`` for proposing; wait for its answer (bound the wait).
        Raises :class:`UnavailableError` when ``leader`` is not (or stops being) the leader
        this member knows before it answered: the outcome is then unknown."""
        self._check_leader(leader)
        return await self._forwarding.forward(leader, data)

    def _check_leader(self, leader: int) -> None:
        self._check_running()
        if self._leader != leader:
            raise UnavailableError(f"{self._name}: {leader} is no longer the leader here")

    def serve_remote(self, handler: RemoteHandler) -> None:
        """Run statement requests forwarded by other members with ``handler`` (leader)."""
        self._forwarding.serve_remote(handler)

    async def execute_remote(self, leader: int, data: bytes) -> ExecuteResult:
        """Send a statement request to ``leader``; wait for its answer (bound the wait).
        Raises :class:`UnavailableError` as :meth:`forward` does."""
        self._check_leader(leader)
        return await self._forwarding.execute_remote(leader, data)

    async def read_index(self) -> int:
        """A linearizable read point (ReadIndex, batched: see :mod:`._reads`). Raises
        NotLeaderError when no leader is known; waits forever if the request is lost
        (callers bound and retry)."""
        self._check_running()
        return await self._reads.read_index()

    async def change_role(self, node_id: int, role: Role | None) -> tuple[int, int]:
        """Propose ``node_id`` in ``role`` (None removes it): (index, term) of the entry."""

        def action(node: RaftNode) -> tuple[int, int]:
            conf = node.status().conf
            if conf.role_of(node_id) == role:
                return 0, node.term
            return node.propose_conf_change(conf.with_role(node_id, role)), node.term

        return await self._call(action)

    async def transfer_leadership(self, to: int) -> None:
        await self._call(lambda node: node.transfer_leadership(to))

    async def status(self) -> Status:
        return await self._call(lambda node: node.status())

    # -- the driver task --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load storage, start the node, and drive it until cancelled."""
        if self._running or self._stopped:
            raise UnavailableError(f"{self._name}: a raft driver runs once")
        try:
            self._node = await self._start_node()
            self._running = True
            async with trio.open_nursery() as nursery:
                self._forwarding.nursery = nursery
                nursery.start_soon(self._forward_inbound)
                # peers' messages come straight into the inbox from now on (one hop less
                # each; the task above forwards whatever is left in the transport's queue)
                self._transport.deliver_to(self._inbox_send, self._direct_inbound)
                task_status.started()
                await self._loop()
        finally:
            self._transport.deliver_to(None)
            self._forwarding.nursery = None
            self._running = False
            self._stopped = True
            self._inbox_send.close()
            self._wake_all()

    async def _start_node(self) -> RaftNode:
        persisted = await self._store.load()
        if (
            self._bootstrap is not None
            and persisted.hard_state.term == 0
            and not persisted.entries
            and persisted.snapshot is None
        ):
            persisted = bootstrap_state(self._bootstrap)
            await self._store.persist(persisted.hard_state, persisted.entries, None)
            logger.info("%s: bootstrapped raft with %s", self._name, self._bootstrap.as_dict())
        snap = persisted.snapshot
        if snap is not None:
            self._snapshot_index = snap.meta.index
            if self._sm.applied_index < snap.meta.index:
                logger.info("%s: restoring the snapshot at %d", self._name, snap.meta.index)
                await self._sm.restore(snap.data)
        applied = self._sm.applied_index
        self._applied = applied
        cfg = self.config
        node = RaftNode(
            Config(
                id=self.id,
                election_tick=cfg.election_tick,
                heartbeat_tick=cfg.heartbeat_tick,
                snapshot_chunk_size=cfg.snapshot_chunk_size,
                snapshot_trailing=cfg.snapshot_trailing,
                lease_read=cfg.lease_read,
                applied=applied,
            ),
            self._rng,
            _trim(persisted),
        )
        if node.status().conf.voters == {self.id}:
            # the only voter: nobody to disturb, elect ourselves now instead of after a timeout
            for _ in range(2 * cfg.election_tick):
                node.tick()
        self._term = node.term
        logger.info(
            "%s: raft node %d started: term %d, commit %d, applied %d, last %d",
            self._name,
            self.id,
            node.term,
            node.committed,
            applied,
            node.last_index,
        )
        return node

    async def _forward_inbound(self) -> None:
        async for msg in self._transport.inbound:
            await self._inbox_send.send(msg)

    async def _loop(self) -> None:
        node = self._node
        assert node is not None
        interval = self.config.tick_interval
        lease = self.config.lease_read
        next_tick = trio.current_time() + interval
        hold = self._hold
        while True:
            # the hold's deadline is math.inf when it is empty, and the end of this loop
            # empties it once the deadline passed: never a wake-up time in the past
            wake = next_tick if hold is None else min(next_tick, hold.deadline)
            with trio.move_on_at(wake):
                event = await self._inbox_recv.receive()
                if lease:  # a lease is counted in ticks: none may be missing before a read
                    next_tick = self._tick_due(node, next_tick)
                self._handle(node, event)
                for _ in range(self.config.inbox_size):
                    try:
                        event = self._inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(node, event)
            next_tick = self._tick_due(node, next_tick)
            if node.has_ready():
                await self._handle_ready(node, node.ready())
                await self._maybe_compact(node)
            if hold is not None and hold.deadline <= trio.current_time():
                self._transport.send(hold.take_all())

    def _direct_inbound(self, msg: Wire) -> bool:
        """Settle a read request or answer in the connection's receive loop, without the
        inbox (see :meth:`Transport.deliver_to`): whether it was. The answer to a read
        point goes to the callers waiting for it (stepping it would only queue it for the
        next Ready); a follower's read request is answered at once when the node can
        answer it without a heartbeat round (:meth:`RaftNode.answer_read`). Saves a trip
        through this task and a Ready per read batch, on both members."""
        if isinstance(msg, MsgReadIndexResp):
            self._reads.answered((ReadState(msg.index, msg.ctx),))
            return True
        if isinstance(msg, MsgReadIndex) and self._node is not None:
            answer = self._node.answer_read(msg)
            if answer is not None:
                self._send((answer,))
                return True
        return False

    def _tick_due(self, node: RaftNode, next_tick: float) -> float:
        """Tick if a tick is due; return when the next one is.

        A loop that was held up (a long fsync, a paused process) ticks once, not once per
        missed tick, so that a follower handles what queued up before it times out the
        leader. A leader serving lease reads ticks every missed tick instead: its lease is
        measured in its own ticks, which must not lag real time (the core's lease ends
        earlier the more ticks pass; missing ones would stretch it)."""
        now = trio.current_time()
        if now < next_tick:
            return next_tick
        interval = self.config.tick_interval
        if self.config.lease_read and node.role is StateRole.LEADER:
            missed = int((now - next_tick) // interval) + 1
            for _ in range(missed):
                node.tick()
            return next_tick + missed * interval
        node.tick()
        return max(next_tick + interval, now + interval / 2)

    def _handle(self, node: RaftNode, event: _Event) -> None:
        if isinstance(event, _Request):
            try:
                event.reply.set(event.action(node))
            except (NotLeaderError, ProposalDroppedError, UnavailableError, ValueError) as exc:
                event.reply.fail(exc)
            except Exception as exc:  # a usage error: report it to the caller, keep driving
                logger.warning("%s: request failed: %r", self._name, exc, exc_info=True)
                event.reply.fail(exc)
            return
        msg = self._forwarding.handle(node, event)
        if msg is not None:
            node.step(msg)

    async def _handle_ready(self, node: RaftNode, rd: Ready) -> None:
        messages: Sequence[Message] = rd.messages
        if messages and rd.entries and rd.soft_state.role is StateRole.LEADER:
            messages, queued = self._send_appends_early(messages)
            if queued:
                # Let the sender tasks write those appends before the storage thread starts:
                # once it runs, it holds the GIL for its own Python work (encoding, writes)
                # until the fsync, and the followers would get the entries that much later.
                # Two passes: the senders run in the next one whichever order trio picks.
                # (Appends to an idle link were written by the transport already.)
                await _let_senders_run()
        if rd.snapshot is not None or rd.entries:
            await self._store.persist(rd.hard_state, rd.entries, rd.snapshot)
        elif rd.hard_state is not None and not self._store.persist_inline(rd.hard_state):
            await self._store.persist(rd.hard_state, (), None)
        if rd.hard_state is not None:
            self._term, self._commit = rd.hard_state.term, rd.hard_state.commit
        if rd.snapshot is not None:
            await self._install(rd.snapshot.meta.index, rd.snapshot.data)
        late: Sequence[MsgApp] = ()
        leads = rd.soft_state.role is StateRole.LEADER
        if messages and leads and (rd.committed_entries or self._hold is not None):
            messages, late = split_commit_only(messages)
        if messages:
            queued = self._send(messages)
            if queued and rd.committed_entries and not leads:
                # A follower's acks leave before it applies (the leader waits for them, not
                # for our apply): the sender tasks run in the next scheduler pass, in an
                # order trio picks, so two passes (the apply itself rarely yields: it takes
                # a free lock without a pass).
                await _let_senders_run()
        for entry in rd.committed_entries:
            if entry.index <= self._applied:
                continue
            data = entry.data if entry.type is EntryType.NORMAL else None
            await self._sm.apply(entry.index, data, term=entry.term)
            self._record_applied(entry.index, entry.term)
        if late:
            self._send_commits(late, messages)
        if rd.read_states:
            self._reads.answered(rd.read_states)
        ss = rd.soft_state
        if ss.leader_id != self._leader or ss.role is not self._role:
            if ss.role is not StateRole.LEADER and self._hold is not None:
                self._hold.take_all()  # dropped: the next leader's appends carry the commit
            if ss.leader_id != self._leader:
                logger.info(
                    "%s: leader is now %s (term %d)",
                    self._name,
                    node_label(ss.leader_id),
                    node.term,
                )
            if ss.leader_id != self._leader:
                self._forwarding.leader_changed(ss.leader_id)
            self._leader, self._role = ss.leader_id, ss.role
            self._term = node.term
            self._notify()
        node.advance(rd)

    def _send_appends_early(self, messages: Sequence[Message]) -> tuple[Sequence[Message], bool]:
        """Raft thesis 10.2.1: the leader's appends go out while it writes the same entries
        to its own disk; return the messages that must wait for that write.

        Safe because this loop steps no message while it persists: the followers' acks, and
        with them any commit that counts the leader's own copy, are processed only after the
        write returned. An append is held back only if the commit index it carries is not
        durable here yet (a sole voter commits its entries at once: non-voters must not
        apply them before the voter's own copy is on disk). Also returns whether any of
        them was queued for a sender task (rather than written at once)."""
        durable = self._store.statistics().last_index
        early = [m for m in messages if isinstance(m, MsgApp) and m.commit <= durable]
        if not early:
            return messages, False
        queued = self._send(early)
        rest = [m for m in messages if not (isinstance(m, MsgApp) and m.commit <= durable)]
        return rest, queued

    def _send(self, messages: Sequence[Wire]) -> bool:
        """Hand Raft messages to the transport (through the hold: see
        :meth:`CommitHold.sending`); whether any was queued for a sender task."""
        if self._hold is not None:
            messages = self._hold.sending(messages)
        return self._transport.send(messages)

    def _send_commits(self, commits: Sequence[MsgApp], sent: Sequence[Message]) -> None:
        """A leader's commit notifications, after the apply (``sent``: this Ready's other
        messages, already sent): held back unless the follower waits for its own apply
        (it forwarded a write: :meth:`Forwarding.waits_for_commit`)."""
        if self._hold is not None:
            waits = self._forwarding.waits_for_commit
            commits = self._hold.hold(commits, sent, waits, trio.current_time())
        if commits:
            self._send(commits)

    async def _install(self, index: int, data: bytes) -> None:
        logger.info("%s: installing the snapshot at %d", self._name, index)
        await self._sm.restore(data)
        self._snapshot_index = index
        self._applied = self._sm.applied_index
        self._recent.clear()
        for waiting_index in [i for i in self._waiters if i <= self._applied]:
            for waiter in self._waiters.pop(waiting_index):
                waiter.done.set()  # term stays None: cannot tell
        self._notify()

    def _record_applied(self, index: int, term: int) -> None:
        if index != self._applied + 1:
            self._recent.clear()
        self._recent.append(term)
        self._applied = index
        waiters = self._waiters.pop(index, None)
        if waiters:
            for waiter in waiters:
                waiter.term = term
                waiter.done.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _maybe_compact(self, node: RaftNode) -> None:
        if node.applied - self._snapshot_index < self.config.snapshot_threshold:
            return
        snap = await self._sm.snapshot()
        if snap.index <= self._snapshot_index or snap.index > node.applied:
            return
        raft_snap = node.compact(snap.index, snap.data)
        await self._store.save_snapshot(raft_snap)
        self._snapshot_index = snap.index
        keep_from = node.first_index
        if keep_from > 1:
            await self._store.compact_to(min(keep_from - 1, snap.index))
        logger.info(
            "%s: snapshot at %d (%d bytes); log kept from %d",
            self._name,
            snap.index,
            len(snap.data),
            keep_from,
        )

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.done.set()
        self._waiters.clear()
        stopped = UnavailableError(f"{self._name}: raft driver stopped")
        self._reads.fail_all(stopped)
        self._forwarding.fail_all(stopped)
        while True:
            try:
                event = self._inbox_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(event, _Request):
                event.reply.fail(stopped)
        self._notify()


async def _let_senders_run() -> None:
    """Two scheduler passes: messages just handed to the transport are written by their
    sender tasks, which run in the next pass in an order trio picks, before we go on."""
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()


def _trim(persisted: PersistedState) -> PersistedState:
    """Entries at or below the snapshot are not the node's business."""
    snap = persisted.snapshot
    if snap is None:
        return persisted
    entries = tuple(e for e in persisted.entries if e.index > snap.meta.index)
    return PersistedState(persisted.hard_state, snap, entries)
