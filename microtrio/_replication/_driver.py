"""The Raft driver: one task per member that turns a pure :class:`RaftNode` into a live one.

Theory of operation
-------------------

Everything that touches the :class:`~microtrio.raft.RaftNode` happens in the driver task
(:meth:`RaftDriver.run`). Other tasks talk to it through one bounded inbox channel:

* inbound peer traffic (a forwarder task moves the transport's inbound messages into the
  inbox, so a slow driver pushes back on the transport);
* local requests (propose, read index, membership change, leadership transfer, status),
  each carrying a :class:`_Reply` the caller waits on (with its own deadline).

The loop takes one event (or wakes up for the next tick: ticks come from trio's clock
every ``tick_interval`` seconds, and a late loop never ticks twice in a row), drains what
else is queued, and then handles one Ready in contract order:

1. persist snapshot, entries and hard state in one call of the storage thread (one group
   fsync for the entries) - :meth:`AsyncLogStore.persist`;
2. install a received snapshot into the state machine (``restore``);
3. only then send the messages;
4. apply the committed entries in order (``apply(index, data, term=...)``; no-op and
   configuration entries advance the index only) and resolve whoever waits for them;
5. answer read-index requests, then ``advance``.

After advancing, when more than ``snapshot_threshold`` entries were applied since the last
snapshot, the driver takes the state machine's snapshot, hands it to ``node.compact`` and
writes it, then compacts the durable log behind what the node still keeps in memory.

Restart: storage is loaded (a torn tail is cut there), a snapshot newer than the state
machine is restored into it first, and the node is told the state machine's applied index
(``Config.applied``) so no entry is applied twice (the applier is idempotent as well).

Forwarded writes travel on the Raft channel itself (:mod:`._wire`): a follower sends
:class:`ForwardPropose` to the leader, which proposes the payload and answers with
:class:`ForwardResult` (the index and term it got, or "not leader").
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, final

import trio

from .._errors import UnavailableError
from .._log import node_label
from ..raft import (
    Config,
    ConfState,
    EntryType,
    Message,
    MsgApp,
    NotLeaderError,
    PersistedState,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    StateRole,
    Status,
    bootstrap_state,
)
from ._storage import AsyncLogStore
from ._transport import Transport
from ._wire import (
    WIRE_CODEC,
    ExecuteResult,
    ForwardExecute,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    Wire,
)

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


@final
@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Timing and sizing of one driver (ticks are ``tick_interval`` seconds of trio time).

    Defaults: heartbeats every 100 ms, elections after 0.5 to 1 s of silence. Idle cost
    scales with the heartbeat rate (a 3-member cluster burned 8.1 % of a core with 50 ms
    heartbeats, 3.8 % with 100 ms ticks and heartbeats); nothing on the write or read path
    waits for a tick (appends, commits and ReadIndex rounds go out at once).
    """

    tick_interval: float = 0.1
    election_tick: int = 5
    heartbeat_tick: int = 1
    #: Entries applied since the last snapshot before a new one is taken.
    snapshot_threshold: int = 4096
    #: Entries the node keeps behind a snapshot (slow followers catch up by log).
    snapshot_trailing: int = 1024
    snapshot_chunk_size: int = 1 << 20
    #: Serve ReadIndex on the leader from its lease (no heartbeat round; relies on
    #: bounded clock drift between members, as etcd's lease-based reads).
    lease_read: bool = False
    inbox_size: int = 1024
    #: Terms of this many recently applied entries are remembered (commit outcomes).
    recent_terms: int = 65536
    #: Forwarded statement requests the leader runs at once; more are refused (retried).
    remote_limit: int = 1024

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        if self.snapshot_threshold < 1 or self.inbox_size < 1 or self.recent_terms < 1:
            raise ValueError("snapshot_threshold, inbox_size and recent_terms must be >= 1")


class _Snapshot(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def data(self) -> bytes: ...


class StateMachine(Protocol):
    """What the driver applies to (the database's :class:`~microtrio._db.Applier`)."""

    @property
    def applied_index(self) -> int: ...

    async def apply(self, index: int, payload: bytes | None, *, term: int = 0) -> None: ...

    async def snapshot(self) -> _Snapshot: ...

    async def restore(self, data: bytes) -> None: ...


@final
class _Reply(Generic[_T]):
    """A one-shot answer from the driver task to a waiting caller."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None

    def set(self, value: _T) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> _T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Request:
    """A local request: ``action(node)`` runs in the driver task; its result is the reply."""

    action: Callable[[RaftNode], Any]
    reply: _Reply[Any]


@dataclass(frozen=True, slots=True)
class _Inbound:
    msg: Wire


_Event = _Request | _Inbound

#: Runs an encoded statement request (the database's writer); returns (reply, index).
RemoteHandler = Callable[[bytes], Awaitable[tuple[bytes, int]]]


@final
class _ReadBatch:
    """Callers sharing one ReadIndex request (``ctx``) and its reply."""

    __slots__ = ("ctx", "reply", "waiters")

    def __init__(self, ctx: bytes) -> None:
        self.ctx = ctx
        self.reply: _Reply[int] = _Reply()
        self.waiters = 0


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
        self._reads: dict[bytes, _Reply[int]] = {}
        self._read_next: _ReadBatch | None = None  # callers waiting for the next ReadIndex
        self._read_inflight: _ReadBatch | None = None  # the one handed to the node
        # request id -> (the leader asked, its answer); ids are random so that an answer
        # meant for an earlier run of this member can never match a new request
        self._forwards: dict[int, tuple[int, _Reply[ForwardResult]]] = {}
        self._executes: dict[int, tuple[int, _Reply[ExecuteResult]]] = {}
        self._remote_handler: RemoteHandler | None = None
        self._remote_running = 0
        self._nursery: trio.Nursery | None = None
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
        reply: _Reply[_T] = _Reply()
        try:
            await self._inbox_send.send(_Request(action, reply))
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

    async def forward(self, leader: int, data: bytes) -> ForwardResult:
        """Send ``data`` to ``leader`` for proposing; wait for its answer (bound the wait)."""
        self._check_running()
        request_id = self._rng.getrandbits(63) or 1
        reply: _Reply[ForwardResult] = _Reply()
        self._forwards[request_id] = (leader, reply)
        try:
            self._transport.send([ForwardPropose(self.id, leader, request_id, data)])
            return await reply.wait()
        finally:
            self._forwards.pop(request_id, None)

    def serve_remote(self, handler: RemoteHandler) -> None:
        """Run :class:`ForwardExecute` requests with ``handler`` while this member leads."""
        self._remote_handler = handler

    async def execute_remote(self, leader: int, data: bytes) -> ExecuteResult:
        """Send a statement request to ``leader``; wait for its answer (bound the wait)."""
        self._check_running()
        request_id = self._rng.getrandbits(63) or 1
        reply: _Reply[ExecuteResult] = _Reply()
        self._executes[request_id] = (leader, reply)
        try:
            self._transport.send([ForwardExecute(self.id, leader, request_id, data)])
            return await reply.wait()
        finally:
            self._executes.pop(request_id, None)

    async def read_index(self) -> int:
        """A linearizable read point (ReadIndex). Raises NotLeaderError when no leader is
        known; waits forever if the request is lost (callers bound and retry).

        Concurrent callers share one ReadIndex request (one heartbeat round on the leader,
        one round trip from a follower), and one request at most is in flight per member
        (continuous batching, as etcd's read loop): callers that arrive while one is in
        flight form the next batch, handed to the node when the current one completes. The
        read point is thus always taken after every caller of its batch arrived, as
        linearizability requires."""
        self._check_running()
        batch = self._read_next
        if batch is None:
            ctx = self._rng.getrandbits(64).to_bytes(8, "big") + self.id.to_bytes(8, "big")
            batch = self._read_next = _ReadBatch(ctx)
            self._reads[ctx] = batch.reply
            if self._read_inflight is None:
                self._issue_read(batch)
        batch.waiters += 1
        try:
            return await batch.reply.wait()
        finally:
            batch.waiters -= 1
            if not batch.waiters:
                self._reads.pop(batch.ctx, None)
                if self._read_next is batch:
                    self._read_next = None
                self._read_done(batch)  # all its callers gave up: do not hold the next back

    def _read_done(self, batch: _ReadBatch) -> None:
        """``batch`` is answered (or failed, or abandoned): hand the next batch over."""
        if self._read_inflight is not batch:
            return
        self._read_inflight = None
        pending = self._read_next
        if pending is not None and not self._stopped:
            self._issue_read(pending)

    def _issue_read(self, batch: _ReadBatch) -> None:
        """Queue the batch's ReadIndex behind everything already in the inbox."""
        self._read_inflight = batch

        def issue(node: RaftNode) -> None:
            if self._read_next is batch:
                self._read_next = None  # later callers start the next batch
            try:
                node.read_index(batch.ctx)
            except NotLeaderError as exc:
                batch.reply.fail(exc)
                self._read_done(batch)
                raise

        try:
            self._inbox_send.send_nowait(_Request(issue, _Reply()))
        except (trio.WouldBlock, trio.ClosedResourceError):
            # a full inbox or a stopped driver: refuse the batch (the committer retries)
            if self._read_next is batch:
                self._read_next = None
            self._read_inflight = None
            batch.reply.fail(NotLeaderError(0) if not self._stopped else self._stopped_error())

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
                self._nursery = nursery
                nursery.start_soon(self._forward_inbound)
                task_status.started()
                await self._loop()
        finally:
            self._nursery = None
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
            await self._inbox_send.send(_Inbound(msg))

    async def _loop(self) -> None:
        node = self._node
        assert node is not None
        interval = self.config.tick_interval
        lease = self.config.lease_read
        next_tick = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_tick):
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
        msg = event.msg
        if isinstance(msg, ForwardPropose):
            self._transport.send([self._propose_forwarded(node, msg)])
        elif isinstance(msg, ForwardResult):
            asked, reply = self._forwards.get(msg.request_id, (0, None))
            if asked != msg.src:
                reply = None
            if reply is not None:
                reply.set(msg)
        elif isinstance(msg, ForwardExecute):
            self._start_execute(node, msg)
        elif isinstance(msg, ExecuteResult):
            asked, exec_reply = self._executes.get(msg.request_id, (0, None))
            if exec_reply is not None and asked == msg.src:
                exec_reply.set(msg)
        else:
            node.step(msg)

    def _propose_forwarded(self, node: RaftNode, msg: ForwardPropose) -> ForwardResult:
        try:
            index = node.propose(msg.data)
        except NotLeaderError as exc:
            return ForwardResult(
                self.id, msg.src, msg.request_id, ForwardStatus.NOT_LEADER, leader=exc.leader_id
            )
        except ProposalDroppedError:
            return ForwardResult(
                self.id, msg.src, msg.request_id, ForwardStatus.DROPPED, leader=self.id
            )
        return ForwardResult(self.id, msg.src, msg.request_id, ForwardStatus.OK, index, node.term)

    def _start_execute(self, node: RaftNode, msg: ForwardExecute) -> None:
        """Run a forwarded statement request in its own task (it waits for its commit)."""
        status, leader = ForwardStatus.OK, self.id
        if node.role is not StateRole.LEADER or self._remote_handler is None:
            status, leader = ForwardStatus.NOT_LEADER, node.lead
        elif node.lead_transferee or self._remote_running >= self.config.remote_limit:
            status = ForwardStatus.DROPPED
        if status != ForwardStatus.OK or self._nursery is None:
            result = ExecuteResult(self.id, msg.src, msg.request_id, status, leader=leader)
            self._transport.send([result])
            return
        self._remote_running += 1
        self._nursery.start_soon(self._serve_execute, msg)

    async def _serve_execute(self, msg: ForwardExecute) -> None:
        handler = self._remote_handler
        assert handler is not None
        try:
            data, index = await handler(msg.data)
        except Exception:  # a bug in the handler must not take the driver down
            logger.exception("%s: forwarded statement request failed", self._name)
            return  # no answer: the asking member reports an unknown outcome
        finally:
            self._remote_running -= 1
        result = ExecuteResult(
            self.id, msg.src, msg.request_id, ForwardStatus.OK, index, self.id, data
        )
        self._transport.send([result])

    async def _handle_ready(self, node: RaftNode, rd: Ready) -> None:
        messages: Sequence[Message] = rd.messages
        if messages and rd.entries and rd.soft_state.role is StateRole.LEADER:
            messages = self._send_appends_early(messages)
        if rd.snapshot is not None or rd.entries:
            await self._store.persist(rd.hard_state, rd.entries, rd.snapshot)
        elif rd.hard_state is not None and not self._store.persist_inline(rd.hard_state):
            await self._store.persist(rd.hard_state, (), None)
        if rd.hard_state is not None:
            self._term, self._commit = rd.hard_state.term, rd.hard_state.commit
        if rd.snapshot is not None:
            await self._install(rd.snapshot.meta.index, rd.snapshot.data)
        if messages:
            self._transport.send(messages)
        for entry in rd.committed_entries:
            if entry.index <= self._applied:
                continue
            data = entry.data if entry.type is EntryType.NORMAL else None
            await self._sm.apply(entry.index, data, term=entry.term)
            self._record_applied(entry.index, entry.term)
        for rs in rd.read_states:
            reply = self._reads.get(rs.ctx)
            if reply is not None:
                reply.set(rs.index)
            inflight = self._read_inflight
            if inflight is not None and inflight.ctx == rs.ctx:
                self._read_done(inflight)
        ss = rd.soft_state
        if ss.leader_id != self._leader or ss.role is not self._role:
            if ss.leader_id != self._leader:
                logger.info(
                    "%s: leader is now %s (term %d)",
                    self._name,
                    node_label(ss.leader_id),
                    node.term,
                )
            self._leader, self._role = ss.leader_id, ss.role
            self._term = node.term
            self._notify()
        node.advance(rd)

    def _send_appends_early(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Raft thesis 10.2.1: the leader's appends go out while it writes the same entries
        to its own disk; return the messages that must wait for that write.

        Safe because this loop steps no message while it persists: the followers' acks, and
        with them any commit that counts the leader's own copy, are processed only after the
        write returned. An append is held back only if the commit index it carries is not
        durable here yet (a sole voter commits its entries at once: non-voters must not
        apply them before the voter's own copy is on disk)."""
        durable = self._store.statistics().last_index
        early = [m for m in messages if isinstance(m, MsgApp) and m.commit <= durable]
        if not early:
            return messages
        self._transport.send(early)
        return [m for m in messages if not (isinstance(m, MsgApp) and m.commit <= durable)]

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
        for reply in self._reads.values():
            reply.fail(stopped)
        for _, forward in self._forwards.values():
            forward.fail(stopped)
        for _, execute in self._executes.values():
            execute.fail(stopped)
        while True:
            try:
                event = self._inbox_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(event, _Request):
                event.reply.fail(stopped)
        self._notify()


def _trim(persisted: PersistedState) -> PersistedState:
    """Entries at or below the snapshot are not the node's business."""
    snap = persisted.snapshot
    if snap is None:
        return persisted
    entries = tuple(e for e in persisted.entries if e.index > snap.meta.index)
    return PersistedState(persisted.hard_state, snap, entries)
