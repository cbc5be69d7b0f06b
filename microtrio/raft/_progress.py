"""The leader's view of one follower: match/next indexes and flow control.

States (as etcd's): PROBE sends one append per heartbeat until the follower's position is
known; REPLICATE streams appends optimistically, at most ``max_inflight`` messages unacknowledged;
SNAPSHOT sends an InstallSnapshot in chunks and no appends.
"""

from __future__ import annotations

from collections import deque

from ._types import ProgressState, ProgressStatus

__all__ = ["Progress"]


class Progress:
    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "probe_sent",
        "read_acked",
        "read_sent",
        "recent_active",
        "sent_commit",
        "snap_idle",
        "snap_index",
        "snap_offset",
        "snap_sent",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        #: highest commit index told to this follower in an append
        self.sent_commit = 0
        #: highest read round sent to this follower in a heartbeat, and acknowledged by it
        self.read_sent = 0
        self.read_acked = 0
        self.max_inflight = max_inflight
        #: last index of each unacknowledged append (REPLICATE state)
        self.inflight: deque[int] = deque()
        #: snapshot being sent: its index, bytes acknowledged, whether a chunk is unacked and
        #: for how many heartbeat responses it has been
        self.snap_index = 0
        self.snap_offset = 0
        self.snap_sent = False
        self.snap_idle = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snap_index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snap_index = self.snap_offset = 0
        self.snap_sent = False

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snap_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.inflight.clear()
        self.probe_sent = False
        self.snap_index = snap_index
        self.snap_offset = 0
        self.snap_sent = False

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent_entries(self, last: int) -> None:
        """Record an append message whose last entry is ``last``."""
        if self.state is ProgressState.REPLICATE:
            if last >= self.next:
                self.next = last + 1
                self.inflight.append(last)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A successful append response up to ``index``; True when match advanced."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A rejection of prev index ``rejected``; ``hint`` is the last index that may match.
        False when the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def status(self) -> ProgressStatus:
        return ProgressStatus(self.match, self.next, self.state, self.recent_active)
