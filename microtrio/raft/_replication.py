"""Log replication, heartbeats, chunked snapshots and ReadIndex: the message-handling half of
:class:`~microtrio.raft.RaftNode` (a mixin; the state lives in the node, see ``_node.py``).
"""

from __future__ import annotations

import logging
import random

from ._log import RaftLog
from ._messages import (
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgSnap,
    MsgSnapResp,
    MsgTimeoutNow,
)
from ._progress import Progress
from ._readonly import ReadOnly
from ._types import (
    Config,
    ConfState,
    ProgressState,
    ReadState,
    Snapshot,
    SnapshotMeta,
    StateRole,
)

__all__ = ["Replication"]

logger = logging.getLogger("microtrio.raft")


class Replication:
    """Message handlers for replication; mixed into RaftNode (which owns every attribute)."""

    config: Config
    id: int
    term: int
    lead: int
    role: StateRole
    conf: ConfState
    prs: dict[int, Progress]
    lead_transferee: int
    _rng: random.Random
    _log: RaftLog
    _msgs: list[Message]
    _read_states: list[ReadState]
    _readonly: ReadOnly
    _snapshot: Snapshot | None
    _pending_snapshot: Snapshot | None
    _snap_rx: tuple[SnapshotMeta, list[bytes], int] | None
    _confs: list[tuple[int, ConfState]]
    _bcast_entries: bool
    _bcast_commit: bool
    _ticks: int
    _round_ticks: dict[int, int]
    _round_floor: int
    _lease_acks: dict[int, int]
    _lease_blocked_until: int
    _read_sent: int

    # Implemented by RaftNode.
    def _maybe_commit(self) -> bool:
        raise NotImplementedError

    def _on_follower_append(self, first: int) -> None:
        raise NotImplementedError

    def _set_conf(self, conf: ConfState) -> None:
        raise NotImplementedError

    def _sync_progress(self) -> None:
        raise NotImplementedError

    # -- leader: sending ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the appends that proposals / commit advances made due (batched per Ready)."""
        if not (self._bcast_entries or self._bcast_commit):
            return
        self._bcast_entries = self._bcast_commit = False
        if self.role is not StateRole.LEADER:
            return
        commit = self._log.committed
        for node, pr in self.prs.items():
            if node != self.id:
                self._send_appends(node, pr, pr.sent_commit < commit, commit_only=True)

    def _send_appends(
        self, to: int, pr: Progress, allow_empty: bool = False, *, commit_only: bool = False
    ) -> None:
        """Send as many appends as flow control allows (one when probing). ``commit_only``:
        an empty append would only carry a new commit index (no loss recovery, no probe)."""
        sent = self._send_append(to, pr, allow_empty, commit_only)
        last = self._log.last_index
        while sent and pr.state is ProgressState.REPLICATE and pr.next <= last:
            sent = self._send_append(to, pr, False)

    def _send_append(
        self, to: int, pr: Progress, allow_empty: bool, commit_only: bool = False
    ) -> bool:
        if pr.is_paused():
            return False
        log = self._log
        nxt = pr.next
        prev_term = log.term(nxt - 1)
        if prev_term is None:
            return self._start_snapshot(to, pr)
        last = log.last_index
        if nxt > last:
            if pr.state is ProgressState.REPLICATE and not allow_empty:
                return False
            # A replicating follower's answer to an append that only moves its commit
            # index tells us nothing: it takes no slot of flow control (sent_entries below
            # records nothing in REPLICATE), its match is what it acknowledged already or
            # what its in-flight appends will acknowledge, and liveness (check_quorum,
            # leases, read rounds) counts heartbeat answers. So it is not asked for. A
            # mismatch (an earlier append was lost) is still answered, and heartbeat
            # answers re-send appends to a follower that lags. Probes always want one.
            ack = not (commit_only and pr.state is ProgressState.REPLICATE)
            self._msgs.append(
                MsgApp(self.id, to, self.term, nxt - 1, prev_term, (), log.committed, ack)
            )
            pr.sent_entries(nxt - 1)
            pr.sent_commit = log.committed
            return True
        cfg = self.config
        batch = log.slice(nxt, min(last + 1, nxt + cfg.max_msg_entries), cfg.max_msg_bytes)
        self._msgs.append(
            MsgApp(self.id, to, self.term, nxt - 1, prev_term, tuple(batch), log.committed)
        )
        pr.sent_entries(batch[-1].index)
        pr.sent_commit = log.committed
        return True

    def _read_round(self, read_round: int) -> None:
        """Send a new read round to just enough voters to make a quorum with us.

        Any quorum of acknowledgements releases the round; asking every follower makes the
        others do work nobody needs (with three voters: a heartbeat and its answer per
        round, on a follower and on us). The round goes to voters that answered every read
        round sent to them, least recently asked first (so rounds alternate between them);
        to every member when too few did. A voter that stops answering misses one round at
        most: the next heartbeat carries the round to every member (see ``_tick_leader``),
        and the voter is not asked again until it answered."""
        voters = self.conf.voters
        need = len(voters) // 2 + 1 - (self.id in voters)
        ready = sorted(
            (pr.read_sent, node)
            for node, pr in self.prs.items()
            if node != self.id and node in voters and pr.read_acked >= pr.read_sent
        )
        if need <= 0 or len(ready) < need:
            self._broadcast_heartbeat(read_round)
        else:
            self._broadcast_heartbeat(read_round, [node for _, node in ready[:need]])

    def _heartbeat_round(self) -> int:
        """The read round a periodic heartbeat carries: the newest one while reads wait;
        else the newest one a follower left unanswered (it answers it, once it hears us
        again, and is asked for read rounds again); else none."""
        current = self._readonly.current_round()
        if current:
            return current
        unanswered = [pr.read_sent for pr in self.prs.values() if pr.read_acked < pr.read_sent]
        return max(unanswered, default=0)

    def _broadcast_heartbeat(self, read_round: int, to: list[int] | None = None) -> None:
        """A heartbeat to every member (or only to ``to``), carrying ``read_round``."""
        commit = self._log.committed
        self._read_sent = max(self._read_sent, read_round)
        if self.config.lease_read:
            # every heartbeat gets its own round, so that acknowledgements tell which send
            # tick they vouch for (an ack of round R also acknowledges earlier reads)
            if not read_round:
                read_round = self._readonly.new_round()
            # a round re-sent later keeps its FIRST send tick: an ack may answer that one;
            # a round forgotten as too old never gets a (later) tick again
            if read_round > self._round_floor:
                self._round_ticks.setdefault(read_round, self._ticks)
            horizon = self._ticks - self.config.election_tick
            for rnd in [r for r, t in self._round_ticks.items() if t < horizon]:
                del self._round_ticks[rnd]
                self._round_floor = max(self._round_floor, rnd)
        for node, pr in self.prs.items():
            if node != self.id and (to is None or node in to):
                if read_round:
                    pr.read_sent = max(pr.read_sent, read_round)
                hb_commit = min(pr.match, commit)
                self._msgs.append(MsgHeartbeat(self.id, node, self.term, hb_commit, read_round))

    # -- leader: responses --------------------------------------------------------------------

    def _handle_app_resp(self, m: MsgAppResp) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self._log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_appends(m.src, pr)
            return
        probing_match = pr.state is ProgressState.PROBE and m.index == pr.match
        if pr.maybe_update(m.index) or probing_match:
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snap_index:
                pr.become_probe()
                pr.become_replicate()
            if self._maybe_commit():
                if self.role is not StateRole.LEADER:
                    return  # the commit removed us and we stepped down
                self._flush()
            if m.src not in self.conf.replicated():
                self._sync_progress()  # a removed member caught up with its removal
                if m.src not in self.prs:
                    return
            if m.src == self.lead_transferee and pr.match == self._log.last_index:
                self._msgs.append(MsgTimeoutNow(self.id, m.src, self.term))
                self._block_lease()
        self._send_appends(m.src, pr, pr.sent_commit < self._log.committed, commit_only=True)

    def _handle_heartbeat_resp(self, m: MsgHeartbeatResp) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.is_paused():
            pr.inflight.popleft()  # acks may have been lost: let one more append through
        if pr.state is ProgressState.SNAPSHOT:
            pr.snap_idle += pr.snap_sent
            if pr.snap_idle >= 2:  # no ack for a whole heartbeat round: resend from the ack
                pr.snap_sent = False
                self._send_snapshot_chunk(m.src, pr)
        elif pr.match < self._log.last_index:
            # Appends may have been lost: an empty one at least draws a rejection or an ack.
            self._send_appends(m.src, pr, allow_empty=True)
        sent = self._round_ticks.get(m.read_round) if m.read_round else None
        if sent is not None and m.src in self.conf.voters:
            self._lease_acks[m.src] = max(self._lease_acks.get(m.src, sent), sent)
        pr.read_acked = max(pr.read_acked, m.read_round)
        released = self._readonly.ack(m.src, m.read_round, self.conf.voters)
        for read in released:
            self._respond_read(read.index, read.ctx, read.requester)
        pending = self._readonly.pending
        if released and pending and pending[-1].round > self._read_sent:
            # reads that arrived while that round was out: one new round for all of them
            self._read_round(pending[-1].round)

    # -- snapshots ----------------------------------------------------------------------------

    def _start_snapshot(self, to: int, pr: Progress) -> bool:
        snap = self._snapshot
        if snap is None:
            logger.error("raft %d: follower %d needs a snapshot but none exists", self.id, to)
            return False
        logger.info("raft %d: sending snapshot at %d to %d", self.id, snap.meta.index, to)
        pr.become_snapshot(snap.meta.index)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snap = self._snapshot
        if snap is None or pr.snap_sent:
            return
        if pr.snap_index != snap.meta.index:  # our snapshot changed: start over with the new one
            pr.become_snapshot(snap.meta.index)
        off = pr.snap_offset
        chunk = snap.data[off : off + self.config.snapshot_chunk_size]
        total = len(snap.data)
        done = off + len(chunk) >= total
        self._msgs.append(MsgSnap(self.id, to, self.term, snap.meta, off, total, chunk, done))
        pr.snap_sent = True
        pr.snap_idle = 0

    def _handle_snap_resp(self, m: MsgSnapResp) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.done:
            pr.maybe_update(m.index)
            if pr.state is ProgressState.SNAPSHOT:
                pr.become_probe()
            self._send_appends(m.src, pr)
            return
        if pr.state is not ProgressState.SNAPSHOT or m.index != pr.snap_index:
            return
        if m.offset == pr.snap_offset and pr.snap_sent:
            return  # a duplicate answer: the chunk in flight will be answered itself
        pr.snap_offset = m.offset
        pr.snap_sent = False
        self._send_snapshot_chunk(m.src, pr)

    def _handle_snapshot_chunk(self, m: MsgSnap) -> None:
        """Follower: assemble chunks in order; acknowledge the offset held so far."""
        meta, log = m.meta, self._log
        if meta.index <= log.committed:
            self._snap_rx = None
            self._msgs.append(MsgSnapResp(self.id, m.src, self.term, log.committed, 0, True))
            return
        rx = self._snap_rx
        if rx is None or (rx[0].index, rx[0].term) != (meta.index, meta.term):
            if m.offset != 0:
                self._msgs.append(MsgSnapResp(self.id, m.src, self.term, meta.index, 0))
                return
            rx = (meta, [], 0)
        received = rx[2]
        if m.offset != received:
            self._snap_rx = rx
            self._msgs.append(MsgSnapResp(self.id, m.src, self.term, meta.index, received))
            return
        rx[1].append(m.data)
        received += len(m.data)
        if not m.done:
            self._snap_rx = (meta, rx[1], received)
            self._msgs.append(MsgSnapResp(self.id, m.src, self.term, meta.index, received))
            return
        self._snap_rx = None
        if received != m.total:
            logger.warning("raft %d: snapshot size mismatch, restarting transfer", self.id)
            self._msgs.append(MsgSnapResp(self.id, m.src, self.term, meta.index, 0))
            return
        self._restore(Snapshot(meta, b"".join(rx[1])))
        self._msgs.append(MsgSnapResp(self.id, m.src, self.term, meta.index, received, True))

    def _restore(self, snap: Snapshot) -> None:
        log, meta = self._log, snap.meta
        if log.match_term(meta.index, meta.term):
            log.commit_to(meta.index)  # our log already holds it: just fast-forward the commit
            return
        logger.info("raft %d: installing snapshot at %d (term %d)", self.id, meta.index, meta.term)
        log.restore(meta.index, meta.term)
        self._snapshot = self._pending_snapshot = snap
        self._confs = [(meta.index, meta.conf)]
        self._set_conf(meta.conf)

    # -- follower: appends --------------------------------------------------------------------

    def _handle_append(self, m: MsgApp) -> None:
        log = self._log
        if not _entries_follow(m):
            return  # malformed (a peer broke the protocol): ignored, as if lost
        if m.prev_index < log.committed:
            self._msgs.append(MsgAppResp(self.id, m.src, self.term, log.committed))
            return
        last_new, first_written = log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new >= 0:
            if first_written is not None:
                self._on_follower_append(first_written)
            if m.ack or m.entries:
                self._msgs.append(MsgAppResp(self.id, m.src, self.term, last_new))
            return
        hint = log.find_conflict_by_term(min(m.prev_index, log.last_index), m.prev_term)
        hint_term = log.term(hint) or 0
        self._msgs.append(
            MsgAppResp(self.id, m.src, self.term, m.prev_index, True, hint, hint_term)
        )

    # -- ReadIndex ----------------------------------------------------------------------------

    def answer_read(self, m: MsgReadIndex) -> MsgReadIndexResp | None:
        """The answer to a follower's read request when it needs no heartbeat round (see
        :meth:`_leader_read`), without stepping it: None when it must be stepped.

        It only reads this node's state, so the driver may call it from another task
        between its own steps (a connection's receive loop, sparing the request a trip
        through the driver's inbox and a Ready); stepping the same message at that moment
        would give the same answer."""
        if self.role is not StateRole.LEADER or not self._reads_now(m.src):
            return None
        return MsgReadIndexResp(self.id, m.src, 0, self._log.committed, m.ctx)

    def _reads_now(self, requester: int) -> bool:
        """Whether a read point asked now by ``requester`` is our commit index as it is,
        without a heartbeat round (we lead)."""
        log, voters = self._log, self.conf.voters
        if voters == {self.id}:
            return True
        if log.term(log.committed) != self.term:  # no entry of ours committed yet (6.4 step 1)
            return False
        if self.config.lease_read and self._lease_valid():
            return True
        # A voter asked while it followed us (its lead is reset by any term change), after
        # its reads arrived; we still lead that term. The two of us are a quorum, so no
        # later term's leader existed when it asked: our commit index now covers all
        # that was committed before its reads arrived, without a heartbeat round.
        return requester != self.id and len(voters) <= 3 and {self.id, requester} <= voters

    def _leader_read(self, ctx: bytes, requester: int) -> None:
        log = self._log
        if self._reads_now(requester):
            self._respond_read(log.committed, ctx, requester)
            return
        if log.term(log.committed) != self.term:  # no entry of ours committed yet (6.4 step 1)
            self._readonly.waiting.append((ctx, requester))
            return
        pending = self._readonly.pending
        in_flight = bool(pending) and pending[0].round <= self._read_sent
        rnd = self._readonly.add(
            log.committed, ctx, requester, self.id, self.id in self.conf.voters
        )
        if in_flight:
            # One read round out at a time: this read waits for a round sent AFTER it
            # arrived (its own number, higher than any sent so far, so no answer to an
            # earlier round releases it); that round leaves when the one out is answered
            # (see _handle_heartbeat_resp) or with the next heartbeat, and serves every
            # read that arrived meanwhile. Fewer heartbeat rounds when reads come from
            # several members at once; a lost round is retried by heartbeats as before.
            return
        self._read_round(rnd)

    def _lease_valid(self) -> bool:
        """Whether no other leader can exist now (leader lease, thesis 6.4.1).

        A voter that received our heartbeat sent at tick ``t`` refuses (pre-)votes until
        ``election_tick`` of its ticks passed, the first of which may come at once; so once a
        quorum acknowledged heartbeats sent at ``t`` or later, no other leader can be elected
        before about ``t + election_tick - 1`` of our ticks. One more tick is kept as margin
        for tick phase and clock drift. The driver must not let our ticks lag real time
        (it catches up missed ticks before a leader handles requests). A leadership transfer
        lets votes bypass leases: no lease from the TimeoutNow on (see ``_block_lease``)."""
        if self.lead_transferee or self._ticks < self._lease_blocked_until:
            return False
        voters = self.conf.voters
        if not voters:
            return False
        acked = sorted(
            (self._ticks if v == self.id else self._lease_acks.get(v, -1) for v in voters),
            reverse=True,
        )
        quorum_tick = acked[len(voters) // 2]
        return quorum_tick >= 0 and self._ticks < quorum_tick + self.config.election_tick - 2

    def _block_lease(self) -> None:
        """A TimeoutNow went out: its receiver may win votes that ignore leases. Trust no
        lease for the transfer's timeout plus two election timeouts."""
        self._lease_blocked_until = self._ticks + 3 * self.config.election_tick
        self._lease_acks.clear()

    def _respond_read(self, index: int, ctx: bytes, requester: int) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._msgs.append(MsgReadIndexResp(self.id, requester, 0, index, ctx))


def _entries_follow(m: MsgApp) -> bool:
    """An append's entries must continue ``prev_index`` one by one, with terms that never
    decrease, never exceed the message's term and never precede ``prev_term``."""
    expected, last_term = m.prev_index + 1, m.prev_term
    for e in m.entries:
        if e.index != expected or e.term < last_term or e.term > m.term:
            return False
        expected, last_term = expected + 1, e.term
    return True
