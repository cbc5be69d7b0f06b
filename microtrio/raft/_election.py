"""Elections (sections 5.2, 5.4.1; PreVote, thesis 9.6; CheckQuorum and leader stickiness):
the timing half of :class:`~microtrio.raft.RaftNode` (a mixin; the state lives in the node).
"""

from __future__ import annotations

import logging

from ._messages import (
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgPreVote,
    MsgPreVoteResp,
    MsgSnap,
    MsgVote,
    MsgVoteResp,
)
from ._replication import Replication
from ._types import StateRole

__all__ = ["Elections"]

logger = logging.getLogger("microtrio.raft")


class Elections(Replication):
    """Ticks, campaigns, votes and the term rules; mixed into RaftNode."""

    vote: int
    _votes: dict[int, bool]
    _election_elapsed: int
    _ticks: int
    _heartbeat_elapsed: int
    _randomized_timeout: int

    # Implemented by RaftNode.
    def _promotable(self) -> bool:
        raise NotImplementedError

    def _become_follower(self, term: int, lead: int) -> None:
        raise NotImplementedError

    def _become_pre_candidate(self) -> None:
        raise NotImplementedError

    def _become_candidate(self) -> None:
        raise NotImplementedError

    def _become_leader(self) -> None:
        raise NotImplementedError

    # -- elections ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._ticks += 1
        self._election_elapsed += 1
        if self.role is StateRole.LEADER:
            self._tick_leader()
        elif self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._campaign(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                logger.warning("raft %d: lost contact with a quorum, stepping down", self.id)
                self._become_follower(self.term, 0)
                return
            if self.lead_transferee:
                logger.info(
                    "raft %d: leadership transfer to %d timed out", self.id, self.lead_transferee
                )
                self.lead_transferee = 0
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._heartbeat_round())

    def _quorum_active(self) -> bool:
        voters = self.conf.voters
        active = 0
        for node, pr in self.prs.items():
            if node == self.id:
                active += node in voters
                continue
            if pr.recent_active and node in voters:
                active += 1
            pr.recent_active = False
        return active >= len(voters) // 2 + 1

    def _campaign(self, transfer: bool) -> None:
        if not self._promotable():
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        if self._poll(self.id, True):
            return
        last_index, last_term = self._log.last_index, self._log.last_term()
        pre = self.role is StateRole.PRE_CANDIDATE
        for v in sorted(self.conf.voters):
            if v == self.id:
                continue
            if pre:
                self._msgs.append(MsgPreVote(self.id, v, term, last_index, last_term))
            else:
                self._msgs.append(MsgVote(self.id, v, term, last_index, last_term, transfer))

    def _poll(self, node: int, granted: bool) -> bool:
        """Record a (pre-)vote; act on the result. True when the election is decided."""
        voters = self.conf.voters
        if node not in voters:
            return False
        self._votes.setdefault(node, granted)
        quorum = len(voters) // 2 + 1
        yes = sum(1 for g in self._votes.values() if g)
        no = len(self._votes) - yes
        if yes >= quorum:
            if self.role is StateRole.PRE_CANDIDATE:
                self._start_real_election()
            else:
                self._become_leader()
            return True
        if no >= quorum:
            self._become_follower(self.term, 0)
            return True
        return False

    def _start_real_election(self) -> None:
        self._become_candidate()
        if self._poll(self.id, True):
            return
        last_index, last_term = self._log.last_index, self._log.last_term()
        for v in sorted(self.conf.voters):
            if v != self.id:
                self._msgs.append(MsgVote(self.id, v, self.term, last_index, last_term))

    def _is_log_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (5.4.1): the candidate's log is at least as up-to-date."""
        my_term = self._log.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self._log.last_index)

    def _handle_vote(self, m: MsgVote | MsgPreVote) -> None:
        pre = isinstance(m, MsgPreVote)
        can_vote = (
            self.vote == m.src
            or (self.vote == 0 and self.lead == 0)
            or (pre and m.term > self.term)
        )
        if can_vote and self._is_log_up_to_date(m.last_index, m.last_term):
            if pre:
                self._msgs.append(MsgPreVoteResp(self.id, m.src, m.term, False))
            else:
                self._msgs.append(MsgVoteResp(self.id, m.src, m.term, False))
                self._election_elapsed = 0
                self.vote = m.src
        elif pre:
            self._msgs.append(MsgPreVoteResp(self.id, m.src, self.term, True))
        else:
            self._msgs.append(MsgVoteResp(self.id, m.src, self.term, True))

    def _check_term(self, m: Message) -> bool:
        """Term rules common to all roles. False when the message must be dropped."""
        if m.term > self.term:
            if isinstance(m, MsgVote | MsgPreVote):
                force = isinstance(m, MsgVote) and m.transfer
                in_lease = self.config.check_quorum and (
                    (self.lead != 0 and self._election_elapsed < self.config.election_tick)
                    # a voter that just (re)started may have acknowledged a lease before:
                    # with lease reads it keeps that promise for one election timeout
                    or (self.config.lease_read and self._ticks < self.config.election_tick)
                )
                if in_lease and not force:
                    return False
            if isinstance(m, MsgPreVote) or (isinstance(m, MsgPreVoteResp) and not m.reject):
                return True
            lead = m.src if isinstance(m, MsgApp | MsgHeartbeat | MsgSnap) else 0
            self._become_follower(m.term, lead)
            return True
        if m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and isinstance(
                m, MsgApp | MsgHeartbeat
            ):
                # Tell a stale leader about the newer term so that it steps down.
                self._msgs.append(MsgAppResp(self.id, m.src, self.term, 0))
            elif isinstance(m, MsgPreVote):
                self._msgs.append(MsgPreVoteResp(self.id, m.src, self.term, True))
            return False
        return True
