"""Membership bookkeeping (thesis chapter 4): configurations in the log, in effect on append,
who receives the log, and stepping down once a committed change removed the leader. A mixin of
:class:`~microtrio.raft.RaftNode` (the state lives in the node).
"""

from __future__ import annotations

import logging

from ._codec import decode_conf_state
from ._election import Elections
from ._messages import MsgHeartbeat, MsgTimeoutNow
from ._progress import Progress
from ._types import ConfState, EntryType, StateRole

__all__ = ["Membership"]

logger = logging.getLogger("microtrio.raft")


class Membership(Elections):
    """Configuration changes and their effect on replication; mixed into RaftNode."""

    def _on_follower_append(self, first: int) -> None:
        """Entries from ``first`` on were (re)written: recompute the configuration."""
        confs = self._confs
        changed = False
        while len(confs) > 1 and confs[-1][0] >= first:
            confs.pop()
            changed = True
        log = self._log
        for e in log.entries[first - log.base - 1 :]:
            if e.type is EntryType.CONF_CHANGE:
                confs.append((e.index, decode_conf_state(e.data)))
                changed = True
        if changed:
            self._set_conf(confs[-1][1])

    def _set_conf(self, conf: ConfState) -> None:
        old = self.conf
        self.conf = conf
        if conf != old:
            logger.info("raft %d: configuration %s", self.id, conf.as_dict())
        if self.role is not StateRole.LEADER:
            return
        # A member (re)added by this configuration gets fresh progress: a forcibly removed
        # member's progress may linger (kept until it holds its removal, which a dead member
        # never does), and its match index says nothing about the fresh log it rejoins with.
        for m in conf.replicated() - old.replicated():
            if m != self.id:
                self.prs.pop(m, None)
        self._sync_progress()
        if conf.voters != old.voters:
            self._maybe_commit()

    def _replication_targets(self) -> frozenset[int]:
        """Who receives the log: the latest configuration's voters and stand-bys, plus the
        previous configuration's while the latest is uncommitted (so that a removed member
        learns of its removal)."""
        confs = self._confs
        targets = self.conf.replicated()
        if len(confs) > 1 and confs[-1][0] > self._log.committed:
            targets |= confs[-2][1].replicated()
        return targets

    def _sync_progress(self) -> None:
        if self.role is not StateRole.LEADER:
            return
        targets = self._replication_targets()
        last = self._log.last_index
        for m in targets:
            if m not in self.prs:
                pr = self.prs[m] = Progress(last + 1, self.config.max_inflight_msgs)
                if m == self.id:
                    pr.match = last
        commit, conf_index = self._log.committed, self._confs[-1][0]
        for m in [m for m in self.prs if m not in targets]:
            pr = self.prs[m]
            if m != self.id and pr.match < conf_index:
                continue  # keep replicating until it holds the entry that removes it
            del self.prs[m]
            if m != self.id:
                # Last word to a removed member: the commit index that covers its removal.
                self._msgs.append(MsgHeartbeat(self.id, m, self.term, min(pr.match, commit)))
            if self.lead_transferee == m:
                self.lead_transferee = 0

    def _conf_at(self, index: int) -> ConfState:
        conf = self._confs[0][1]
        for i, c in self._confs:
            if i > index:
                break
            conf = c
        return conf

    def _after_commit(self) -> None:
        """Leader bookkeeping after the commit index moved."""
        self._bcast_commit = True
        if len(self.prs) > len(self.conf.replicated()):
            self._sync_progress()  # the latest configuration committed: drop the old members
        ro = self._readonly
        if ro.waiting and self._log.term(self._log.committed) == self.term:
            waiting, ro.waiting = ro.waiting, []
            for ctx, requester in waiting:
                self._leader_read(ctx, requester)
        if self.id not in self.conf.voters and self._confs[-1][0] <= self._log.committed:
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        last = self._log.last_index
        best = [n for n, pr in self.prs.items() if n in self.conf.voters and pr.match == last]
        if best:
            self._flush()
            self._msgs.append(MsgTimeoutNow(self.id, min(best), self.term))
        logger.info("raft %d: no longer a voter, stepping down", self.id)
        self._become_follower(self.term, 0)
