"""Plain data types of the Raft core: log entries, hard state, membership, snapshots, config.

Everything here is immutable (frozen dataclasses with slots) and free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import final

__all__ = [
    "Config",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "NodeId",
    "PersistedState",
    "ProgressState",
    "ProgressStatus",
    "ReadState",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "StateRole",
    "Status",
]

NodeId = int
"""A member's Raft id: a non-zero integer; 0 means "none"."""


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1
    NOOP = 2


@final
@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` of a CONF_CHANGE entry is an encoded :class:`ConfState`."""

    term: int
    index: int
    type: EntryType
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before messages are sent: current term, vote (0 = none), commit."""

    term: int = 0
    vote: int = 0
    commit: int = 0


class Role(StrEnum):
    """Membership roles (dqlite's). Voters vote and count in quorums; stand-bys receive the log
    but do not vote; spares receive nothing."""

    VOTER = "voter"
    STANDBY = "stand-by"
    SPARE = "spare"


@final
@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: which node has which role. Immutable and hashable."""

    voters: frozenset[int] = frozenset()
    standbys: frozenset[int] = frozenset()
    spares: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.voters & self.standbys or self.voters & self.spares or self.standbys & self.spares:
            raise ValueError("a node has more than one role")
        if 0 in self.voters or 0 in self.standbys or 0 in self.spares:
            raise ValueError("node id 0 is reserved")

    @classmethod
    def from_dict(cls, members: Mapping[int, Role]) -> ConfState:
        return cls(
            voters=frozenset(i for i, r in members.items() if r is Role.VOTER),
            standbys=frozenset(i for i, r in members.items() if r is Role.STANDBY),
            spares=frozenset(i for i, r in members.items() if r is Role.SPARE),
        )

    @classmethod
    def of_voters(cls, ids: Iterable[int]) -> ConfState:
        return cls(voters=frozenset(ids))

    def as_dict(self) -> dict[int, Role]:
        out: dict[int, Role] = {}
        for i in sorted(self.voters):
            out[i] = Role.VOTER
        for i in sorted(self.standbys):
            out[i] = Role.STANDBY
        for i in sorted(self.spares):
            out[i] = Role.SPARE
        return out

    def role_of(self, node: int) -> Role | None:
        if node in self.voters:
            return Role.VOTER
        if node in self.standbys:
            return Role.STANDBY
        if node in self.spares:
            return Role.SPARE
        return None

    def members(self) -> frozenset[int]:
        return self.voters | self.standbys | self.spares

    def replicated(self) -> frozenset[int]:
        """Members that receive the log (voters and stand-bys)."""
        return self.voters | self.standbys

    def with_role(self, node: int, role: Role | None) -> ConfState:
        """A copy with ``node`` given ``role`` (``None`` removes it)."""
        members = self.as_dict()
        if role is None:
            members.pop(node, None)
        else:
            members[node] = role
        return ConfState.from_dict(members)


@final
@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine snapshot at ``meta.index`` (``data`` is opaque to Raft)."""

    meta: SnapshotMeta
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class PersistedState:
    """What storage loads on restart: hard state, latest snapshot, entries after it."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Config:
    """Per-node Raft settings (all in ticks / counts / bytes, never seconds)."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    #: Most entries / bytes of entry data in one append message.
    max_msg_entries: int = 1024
    max_msg_bytes: int = 1 << 20
    #: Most append messages in flight to one follower in replicate state.
    max_inflight_msgs: int = 256
    #: Bytes per InstallSnapshot chunk.
    snapshot_chunk_size: int = 1 << 20
    #: Log entries kept behind a snapshot on compaction (lets slow followers catch up by log).
    snapshot_trailing: int = 1024
    #: Serve reads by leader lease instead of a heartbeat round (needs check_quorum).
    lease_read: bool = False
    #: Index the state machine had already applied before this start (not handed out again).
    applied: int = 0
    #: Most committed entries handed out in one Ready (0: no limit); bounds apply batches.
    max_apply_entries: int = 0

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError("id must be a positive integer")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.max_msg_entries <= 0 or self.max_msg_bytes <= 0 or self.max_inflight_msgs <= 0:
            raise ValueError("batching limits must be positive")
        if self.max_apply_entries < 0 or self.applied < 0:
            raise ValueError("max_apply_entries and applied must not be negative")
        if self.snapshot_chunk_size <= 0 or self.snapshot_trailing < 0:
            raise ValueError("bad snapshot settings")
        if self.lease_read and not self.check_quorum:
            raise ValueError("lease_read requires check_quorum")


class StateRole(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@final
@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads (0 = unknown) and our own role."""

    leader_id: int
    role: StateRole


@final
@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    ctx: bytes


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@final
@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    recent_active: bool


@final
@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    leader_id: int
    role: StateRole
    conf: ConfState
    first_index: int
    last_index: int
    lead_transferee: int = 0
    progress: Mapping[int, ProgressStatus] = field(default_factory=dict)
