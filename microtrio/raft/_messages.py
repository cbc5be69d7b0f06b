"""Raft messages: one frozen dataclass per kind, all with ``src``, ``dst`` and ``term``.

``MsgReadIndex`` / ``MsgReadIndexResp`` are term-less (``term`` is 0): a follower forwards a read
request to whoever it believes leads, and the answer is only used if it comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._types import Entry, SnapshotMeta

__all__ = [
    "Message",
    "MsgApp",
    "MsgAppResp",
    "MsgHeartbeat",
    "MsgHeartbeatResp",
    "MsgPreVote",
    "MsgPreVoteResp",
    "MsgReadIndex",
    "MsgReadIndexResp",
    "MsgSnap",
    "MsgSnapResp",
    "MsgTimeoutNow",
    "MsgVote",
    "MsgVoteResp",
]


@final
@dataclass(frozen=True, slots=True)
class MsgApp:
    """AppendEntries: ``entries`` follow (prev_index, prev_term); leader's commit index.

    ``ack=False`` (only on an append without entries that the leader sends to move a
    replicating follower's commit index) asks for no answer when it matches: the leader
    learns nothing from that answer (its flow control counts only appends with entries).
    A mismatch is always answered."""

    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    ack: bool = True


@final
@dataclass(frozen=True, slots=True)
class MsgAppResp:
    """Answer to MsgApp. On success ``index`` is the follower's last matching index.

    On reject ``index`` is the rejected ``prev_index``; ``reject_hint`` / ``log_term`` point at
    the follower's last entry that may match (fast backtracking, as etcd).
    """

    src: int
    dst: int
    term: int
    index: int
    reject: bool = False
    reject_hint: int = 0
    log_term: int = 0


@final
@dataclass(frozen=True, slots=True)
class MsgVote:
    """RequestVote. ``transfer`` marks a campaign started by leadership transfer (it
    overrides leader stickiness)."""

    src: int
    dst: int
    term: int
    last_index: int
    last_term: int
    transfer: bool = False


@final
@dataclass(frozen=True, slots=True)
class MsgVoteResp:
    src: int
    dst: int
    term: int
    reject: bool


@final
@dataclass(frozen=True, slots=True)
class MsgPreVote:
    """PreVote (thesis 9.6): ``term`` is the term the sender would campaign in; nobody changes
    term because of it."""

    src: int
    dst: int
    term: int
    last_index: int
    last_term: int


@final
@dataclass(frozen=True, slots=True)
class MsgPreVoteResp:
    src: int
    dst: int
    term: int
    reject: bool


@final
@dataclass(frozen=True, slots=True)
class MsgHeartbeat:
    """Leader heartbeat. ``read_round`` > 0 asks for confirmation of a ReadIndex round."""

    src: int
    dst: int
    term: int
    commit: int
    read_round: int = 0


@final
@dataclass(frozen=True, slots=True)
class MsgHeartbeatResp:
    src: int
    dst: int
    term: int
    read_round: int = 0


@final
@dataclass(frozen=True, slots=True)
class MsgSnap:
    """One chunk of an InstallSnapshot: ``data`` is bytes [offset, offset+len) of ``total``."""

    src: int
    dst: int
    term: int
    meta: SnapshotMeta
    offset: int
    total: int
    data: bytes
    done: bool


@final
@dataclass(frozen=True, slots=True)
class MsgSnapResp:
    """Chunk acknowledgement: the follower holds bytes [0, offset) of snapshot ``index``.

    ``done`` means the whole snapshot was received and handed to the application.
    """

    src: int
    dst: int
    term: int
    index: int
    offset: int
    done: bool = False


@final
@dataclass(frozen=True, slots=True)
class MsgTimeoutNow:
    """Leadership transfer: start an election now (no pre-vote, ignore stickiness)."""

    src: int
    dst: int
    term: int


@final
@dataclass(frozen=True, slots=True)
class MsgReadIndex:
    """A follower forwards a linearizable read request to the leader (term-less)."""

    src: int
    dst: int
    term: int
    ctx: bytes


@final
@dataclass(frozen=True, slots=True)
class MsgReadIndexResp:
    """The leader's answer: reads with ``ctx`` may proceed once ``index`` is applied."""

    src: int
    dst: int
    term: int
    index: int
    ctx: bytes


Message = (
    MsgApp
    | MsgAppResp
    | MsgVote
    | MsgVoteResp
    | MsgPreVote
    | MsgPreVoteResp
    | MsgHeartbeat
    | MsgHeartbeatResp
    | MsgSnap
    | MsgSnapResp
    | MsgTimeoutNow
    | MsgReadIndex
    | MsgReadIndexResp
)
