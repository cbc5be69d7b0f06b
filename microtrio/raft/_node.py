"""RaftNode: one member's Raft state machine, with no I/O, no clock and injected randomness.

Theory of operation
-------------------

The application drives the node with three inputs and collects one kind of output:

* ``tick()`` advances logical time by one tick (heartbeats every ``heartbeat_tick`` ticks,
  elections after a randomized timeout in ``[election_tick, 2 * election_tick)``);
* ``step(msg)`` feeds one message received from a peer;
* ``propose(data)`` / ``propose_conf_change`` / ``read_index`` / ``transfer_leadership`` /
  ``compact`` / ``force_new_configuration`` are local requests;
* ``ready()`` returns a frozen :class:`Ready` with all work produced since the last one. The
  application must (1) persist ``ready.snapshot`` (and install it), ``ready.entries`` and
  ``ready.hard_state``, (2) only then send ``ready.messages``, (3) apply
  ``ready.committed_entries`` (only committed entries are ever handed out), serve
  ``ready.read_states`` once applied far enough, and (4) call ``advance(ready)`` before the next
  ``ready()``. ``step``/``tick``/``propose`` may be called between ``ready()`` and ``advance``.

Roles are follower, pre-candidate, candidate and leader. With ``pre_vote`` a node first asks
for pre-votes at term+1 without changing any term (thesis 9.6), so a partitioned node cannot
disrupt the cluster when it comes back. With ``check_quorum`` a leader steps down when it has
not heard from a quorum of voters for an election timeout, and a node that heard from a leader
within the election timeout ignores vote requests (leader stickiness) unless they come from a
leadership transfer. A new leader appends a NOOP entry; an entry is committed by counting only
when it belongs to the leader's current term (5.4.2); votes need an up-to-date log (5.4.1).

Replication follows etcd's flow control: each follower's Progress is PROBE (one append per
heartbeat until the position is known, backtracking fast with the follower's reject hint),
REPLICATE (pipelined appends, at most ``max_inflight_msgs`` unacknowledged, each at most
``max_msg_entries`` entries / ``max_msg_bytes`` bytes) or SNAPSHOT (the follower needs entries
that were compacted: the latest snapshot is sent in ``snapshot_chunk_size`` chunks, each
acknowledged with the offset received; lost chunks are re-sent from the acknowledged offset on
the next heartbeat response; when the leader's snapshot changes the transfer restarts).

Membership lives in the log as CONF_CHANGE entries whose data is the whole new ConfState. A
configuration **takes effect when it is appended** to a log (thesis 4.1), and reverts if the
entry is truncated. The leader accepts one change at a time: a new one only when the previous
is committed and the leader has committed an entry of its own term. A leader that is no longer
a voter keeps leading without counting itself until the change commits, then hands off with
``MsgTimeoutNow`` to the most up-to-date voter and steps down.

Subclass hooks (for deliberately broken variants in tests): ``_is_log_up_to_date`` (the vote
restriction) and ``_maybe_commit`` (the commit rule).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from ._codec import decode_conf_state, encode_conf_state
from ._errors import (
    ConfChangeInProgressError,
    NotLeaderError,
    ProposalDroppedError,
    RaftUsageError,
)
from ._log import RaftLog
from ._membership import Membership
from ._messages import (
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgSnap,
    MsgSnapResp,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
)
from ._progress import Progress
from ._readonly import ReadOnly
from ._ready import Ready
from ._types import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    PersistedState,
    ReadState,
    Snapshot,
    SnapshotMeta,
    SoftState,
    StateRole,
    Status,
)

__all__ = ["RaftNode", "bootstrap_state"]

logger = logging.getLogger("microtrio.raft")


class RaftNode(Membership):
    """One Raft member: a pure state machine driven by ``tick``, ``step`` and local requests.

    The contract for each :class:`Ready` returned by :meth:`ready` (see the module docstring):

    1. persist ``snapshot`` (then install it in the state machine), ``entries`` (replacing any
       durable entries from ``entries[0].index`` on) and ``hard_state``, durably;
    2. only then send ``messages``;
    3. apply ``committed_entries`` in order (only committed entries are ever handed out) and
       serve ``read_states`` once the applied index reaches their index;
    4. call :meth:`advance` with that same Ready before calling :meth:`ready` again.

    ``config.id`` must be unique and stable; ``rng`` is the only source of randomness;
    ``persisted`` is what storage loaded (None for a brand-new, empty member).
    """

    def __init__(
        self, config: Config, rng: random.Random, persisted: PersistedState | None = None
    ) -> None:
        self.config = config
        self.id = config.id
        self._rng = rng
        ps = persisted if persisted is not None else PersistedState()
        snap = ps.snapshot
        base, base_term = (snap.meta.index, snap.meta.term) if snap else (0, 0)
        self._log = log = RaftLog(base, base_term)
        entries = [e for e in ps.entries if e.index > base]
        for k, e in enumerate(entries):
            if e.index != base + 1 + k:
                raise RaftUsageError(f"persisted entries are not contiguous at index {e.index}")
        log.entries = entries
        log.unstable_from = log.last_index + 1
        hs = ps.hard_state
        log.committed = min(max(hs.commit, base), log.last_index)
        log.applying = log.applied = max(base, min(config.applied, log.committed))
        self.term = hs.term
        self.vote = hs.vote
        self.lead = 0
        self.role = StateRole.FOLLOWER
        self._snapshot = snap
        self._pending_snapshot: Snapshot | None = None
        self._confs: list[tuple[int, ConfState]] = [(base, snap.meta.conf if snap else ConfState())]
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                self._confs.append((e.index, decode_conf_state(e.data)))
        self.conf = self._confs[-1][1]
        self.prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._readonly = ReadOnly()
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        #: Ticks since start (never reset): the leader lease is measured in them.
        self._ticks = 0
        #: Leader lease bookkeeping (lease_read): the tick each heartbeat round was sent at,
        #: per voter the send tick of the newest round it acknowledged, and a tick before
        #: which no lease is trusted (a leadership transfer lets votes bypass leases).
        self._round_ticks: dict[int, int] = {}
        self._round_floor = 0
        self._lease_acks: dict[int, int] = {}
        self._lease_blocked_until = 0
        #: The highest read round sent in a heartbeat (reads share rounds: _leader_read).
        self._read_sent = 0
        self._randomized_timeout = config.election_tick
        self.lead_transferee = 0
        self._term_start = 0
        self._bcast_entries = False
        self._bcast_commit = False
        self._snap_rx: tuple[SnapshotMeta, list[bytes], int] | None = None
        self._prev_hs = HardState(self.term, self.vote, log.committed)
        self._prev_ss = SoftState(0, StateRole.FOLLOWER)
        self._ready_out = False
        self._out_hs = self._prev_hs
        self._become_follower(self.term, 0)

    # -- public queries ---------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """First index still held in memory (storage may drop durable entries before it)."""
        return self._log.first_index

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def committed(self) -> int:
        return self._log.committed

    @property
    def applied(self) -> int:
        return self._log.applied

    def status(self) -> Status:
        log = self._log
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            commit=log.committed,
            applied=log.applied,
            leader_id=self.lead,
            role=self.role,
            conf=self.conf,
            first_index=log.first_index,
            last_index=log.last_index,
            lead_transferee=self.lead_transferee,
            progress={i: p.status() for i, p in self.prs.items()},
        )

    def _promotable(self) -> bool:
        return self.id in self.conf.voters

    # -- role transitions -------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        tick = self.config.election_tick
        self._randomized_timeout = tick + self._rng.randrange(tick)
        self.lead_transferee = 0
        self._votes = {}
        self.prs = {}
        self._readonly.clear()
        self._round_ticks.clear()
        self._lease_acks.clear()
        self._bcast_entries = self._bcast_commit = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        if self.role is not StateRole.FOLLOWER:
            logger.info("raft %d: follower at term %d (leader %d)", self.id, term, lead)
        self.role = StateRole.FOLLOWER

    def _become_pre_candidate(self) -> None:
        self._votes = {}
        self.lead = 0
        self.role = StateRole.PRE_CANDIDATE
        logger.info("raft %d: pre-candidate at term %d", self.id, self.term)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE
        logger.info("raft %d: candidate at term %d", self.id, self.term)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = StateRole.LEADER
        last = self._log.last_index
        for m in self._replication_targets():
            self.prs[m] = Progress(last + 1, self.config.max_inflight_msgs)
        me = self.prs.get(self.id)
        if me is not None:
            me.match, me.recent_active = last, True
        self._term_start = last + 1
        self._append([(EntryType.NOOP, b"")])
        logger.info("raft %d: leader at term %d", self.id, self.term)

    # -- step ---------------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Feed one message from a peer."""
        if m.dst != self.id:
            return
        if m.term == 0:
            if not isinstance(m, MsgReadIndex | MsgReadIndexResp):
                return  # only read requests/answers travel without a term
        elif not self._check_term(m):
            return
        match m:
            case MsgVote() | MsgPreVote():
                self._handle_vote(m)
            case MsgVoteResp():
                if self.role is StateRole.CANDIDATE:
                    self._poll(m.src, not m.reject)
            case MsgPreVoteResp():
                if self.role is StateRole.PRE_CANDIDATE:
                    self._poll(m.src, not m.reject)
            case MsgApp() | MsgHeartbeat() | MsgSnap() | MsgTimeoutNow():
                self._step_from_leader(m)
            case MsgAppResp():
                if self.role is StateRole.LEADER:
                    self._handle_app_resp(m)
            case MsgHeartbeatResp():
                if self.role is StateRole.LEADER:
                    self._handle_heartbeat_resp(m)
            case MsgSnapResp():
                if self.role is StateRole.LEADER:
                    self._handle_snap_resp(m)
            case MsgReadIndex():
                if self.role is StateRole.LEADER:
                    self._leader_read(m.ctx, m.src)
            case MsgReadIndexResp():
                self._read_states.append(ReadState(m.index, m.ctx))

    def _step_from_leader(self, m: MsgApp | MsgHeartbeat | MsgSnap | MsgTimeoutNow) -> None:
        if self.role is StateRole.LEADER:
            return  # two leaders in one term cannot happen; ignore defensively
        if self.role is not StateRole.FOLLOWER:
            self._become_follower(self.term, m.src)
        self.lead = m.src
        self._election_elapsed = 0
        match m:
            case MsgApp():
                self._handle_append(m)
            case MsgHeartbeat():
                self._log.commit_to(min(m.commit, self._log.last_index))
                self._msgs.append(MsgHeartbeatResp(self.id, m.src, self.term, m.read_round))
            case MsgSnap():
                self._handle_snapshot_chunk(m)
            case MsgTimeoutNow():
                if self._promotable():
                    logger.info("raft %d: leadership transfer: campaigning now", self.id)
                    self._campaign(transfer=True)

    # -- log changes and membership -----------------------------------------------------------

    def _append(self, items: Sequence[tuple[EntryType, bytes]]) -> int:
        """Leader: append new entries of the current term; return the last index."""
        log = self._log
        term = self.term
        start = log.last_index + 1
        new = [Entry(term, start + k, kind, data) for k, (kind, data) in enumerate(items)]
        log.entries.extend(new)
        last = log.last_index
        for e in new:
            if e.type is EntryType.CONF_CHANGE:
                self._confs.append((e.index, decode_conf_state(e.data)))
                self._set_conf(self._confs[-1][1])
        me = self.prs.get(self.id)
        if me is not None:
            me.match = last
            me.next = last + 1
        self._bcast_entries = True
        if len(self.conf.voters) <= 1:
            self._maybe_commit()
        return last

    # -- commit -------------------------------------------------------------------------------

    def _maybe_commit(self) -> bool:
        """Commit rule (5.4.2): the highest index replicated on a quorum of voters, only if it
        belongs to the current term. True when the commit index advanced."""
        voters = self.conf.voters
        if not voters:
            return False
        prs = self.prs
        matches = sorted((prs[v].match if v in prs else 0 for v in voters), reverse=True)
        index = matches[len(voters) // 2]
        log = self._log
        if index > log.committed and log.term(index) == self.term:
            log.commit_to(index)
            self._after_commit()
            return True
        return False

    # -- local requests -----------------------------------------------------------------------

    def _check_proposal(self) -> None:
        if self.role is not StateRole.LEADER:
            raise NotLeaderError(self.lead)
        if self.lead_transferee:
            raise ProposalDroppedError(f"leadership transfer to {self.lead_transferee} running")

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a NORMAL entry; return its index. Raises NotLeaderError on a
        non-leader and ProposalDroppedError while a leadership transfer runs."""
        self._check_proposal()
        return self._append(((EntryType.NORMAL, data),))

    def propose_many(self, datas: Sequence[bytes]) -> int:
        """Append several NORMAL entries at once; return the index of the last one."""
        self._check_proposal()
        if not datas:
            return self._log.last_index
        return self._append([(EntryType.NORMAL, d) for d in datas])

    def propose_conf_change(self, new: ConfState) -> int:
        """Propose the configuration ``new`` (build it with ``status().conf.with_role(...)``);
        it may differ from the current one in a single member. Returns the entry's index.

        One change at a time: raises ConfChangeInProgressError while an earlier change is
        uncommitted or before the leader has committed an entry of its own term.
        """
        self._check_proposal()
        log = self._log
        if self._confs[-1][0] > log.committed or log.committed < self._term_start:
            raise ConfChangeInProgressError("a membership change is still uncommitted")
        old = self.conf.as_dict()
        changed = {n for n in old.keys() | new.members() if old.get(n) != new.role_of(n)}
        if len(changed) != 1:
            raise RaftUsageError(f"a change must touch exactly one member, not {sorted(changed)}")
        if not new.voters:
            raise RaftUsageError("a configuration needs at least one voter")
        return self._append(((EntryType.CONF_CHANGE, encode_conf_state(new)),))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter ``to``: proposals stop, ``to`` is brought up to date and
        told to campaign at once. Aborted after an election timeout."""
        if self.role is not StateRole.LEADER:
            raise NotLeaderError(self.lead)
        if to == self.id:
            return
        if to not in self.conf.voters or to not in self.prs:
            raise RaftUsageError(f"node {to} is not a voter")
        if self.lead_transferee == to:
            return
        logger.info("raft %d: transferring leadership to %d", self.id, to)
        self.lead_transferee = to
        self._election_elapsed = 0
        pr = self.prs[to]
        if pr.match == self._log.last_index:
            self._msgs.append(MsgTimeoutNow(self.id, to, self.term))
            self._block_lease()
        else:
            self._send_appends(to, pr, allow_empty=True)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; a ReadState(index, ctx) appears in a later Ready
        of this node. Followers forward to the leader; raises NotLeaderError if none is known.
        A request lost on the way (message loss, leader change) is not retried: time out."""
        if self.role is StateRole.LEADER:
            self._leader_read(ctx, self.id)
        elif self.lead:
            self._msgs.append(MsgReadIndex(self.id, self.lead, 0, ctx))
        else:
            raise NotLeaderError(0)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The state machine's snapshot ``data`` at applied ``index``: becomes the snapshot sent
        to lagging followers, and the in-memory log is cut ``snapshot_trailing`` entries behind
        it. Returns the Snapshot; the caller persists it and may then drop durable entries
        before :attr:`first_index`."""
        log = self._log
        if index > log.applied:
            raise RaftUsageError(f"compact({index}) beyond applied index {log.applied}")
        if self._snapshot is not None and index <= self._snapshot.meta.index:
            raise RaftUsageError(f"compact({index}) not newer than the current snapshot")
        term = log.term(index)
        if term is None:
            raise RaftUsageError(f"compact({index}): index is not in the log")
        snap = Snapshot(SnapshotMeta(index, term, self._conf_at(index)), data)
        self._snapshot = snap
        new_base = index - self.config.snapshot_trailing
        if new_base > log.base:
            log.compact_to(new_base)
            base_conf = self._conf_at(new_base)
            self._confs = [(new_base, base_conf)] + [c for c in self._confs if c[0] > new_base]
        return snap

    def force_new_configuration(self, conf: ConfState) -> int:
        """Quorum-loss recovery: append ``conf`` as a new configuration at a new term on this
        member alone (as dqlite's reconfigure). Unsafe unless the lost members stay down or
        are rebuilt. Returns the entry's index."""
        if not conf.voters:
            raise RaftUsageError("a configuration needs at least one voter")
        self._become_follower(self.term + 1, 0)
        log = self._log
        entry = Entry(self.term, log.last_index + 1, EntryType.CONF_CHANGE, encode_conf_state(conf))
        log.append([entry])
        self._confs.append((entry.index, conf))
        self._set_conf(conf)
        logger.warning("raft %d: configuration forced to %s", self.id, conf.as_dict())
        return entry.index

    # -- Ready --------------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self._log.committed)

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would return any work (cheap; call it freely)."""
        self._flush()
        log, hs, ss = self._log, self._prev_hs, self._prev_ss
        return bool(
            self._msgs
            or log.committed > log.applying
            or log.unstable_from <= log.base + len(log.entries)
            or self.term != hs.term
            or self.vote != hs.vote
            or log.committed != hs.commit
            or self.lead != ss.leader_id
            or self.role is not ss.role
            or self._read_states
            or self._pending_snapshot is not None
        )

    def ready(self) -> Ready:
        """Collect the work produced so far (see the module docstring for the contract)."""
        if self._ready_out:
            raise RaftUsageError("ready() called again before advance()")
        self._flush()
        log = self._log
        base = log.base
        hs = self._hard_state()
        committed: tuple[Entry, ...] = ()
        if log.committed > log.applying:
            upto = log.committed
            if self.config.max_apply_entries:
                upto = min(upto, log.applying + self.config.max_apply_entries)
            committed = tuple(log.entries[log.applying - base : upto - base])
            log.applying = upto
        rd = Ready(
            soft_state=SoftState(self.lead, self.role),
            hard_state=hs if hs != self._prev_hs else None,
            entries=tuple(log.entries[log.unstable_from - base - 1 :]),
            snapshot=self._pending_snapshot,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
        )
        self._msgs = []
        self._read_states = []
        self._ready_out = True
        self._out_hs = hs
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was persisted, sent and applied."""
        log = self._log
        if rd.hard_state is not None:
            self._prev_hs = self._out_hs  # what we handed out, whatever the caller did to rd
        self._prev_ss = rd.soft_state
        if rd.entries:
            last = rd.entries[-1]
            if log.term(last.index) == last.term:
                log.unstable_from = max(log.unstable_from, last.index + 1)
        if rd.snapshot is not None:
            if self._pending_snapshot is rd.snapshot:
                self._pending_snapshot = None
            log.applied = max(log.applied, rd.snapshot.meta.index)
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
        self._ready_out = False


def bootstrap_state(conf: ConfState) -> PersistedState:
    """The persisted state of a brand-new cluster's founding member(s).

    Every founding member must start from this same state: one committed CONF_CHANGE entry
    (term 1, index 1) holding ``conf``. Members that join later start from ``None`` (empty) and
    receive the log from the leader.
    """
    entry = Entry(1, 1, EntryType.CONF_CHANGE, encode_conf_state(conf))
    return PersistedState(HardState(term=1, vote=0, commit=1), None, (entry,))
