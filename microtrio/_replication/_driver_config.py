"""The driver's configuration and the seams it drives: the state machine it applies to and
the handler that runs statement requests forwarded to the leader."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, final

__all__ = ["DriverConfig", "RemoteHandler", "StateMachine"]

#: Runs an encoded statement request (the database's writer); returns (reply, index).
RemoteHandler = Callable[[bytes], Awaitable[tuple[bytes, int]]]


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
    #: Seconds a leader holds an append that only tells a follower the new commit index
    #: (the next append to it usually carries it first; see :mod:`._commit_hold`); 0 sends
    #: them at once. Followers waiting for a write they forwarded, or answered a read
    #: point, are told at once either way.
    commit_notify_delay: float = 0.005

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        if self.snapshot_threshold < 1 or self.inbox_size < 1 or self.recent_terms < 1:
            raise ValueError("snapshot_threshold, inbox_size and recent_terms must be >= 1")
        if not (0 <= self.commit_notify_delay < math.inf):
            raise ValueError(
                f"commit_notify_delay must be finite and >= 0, not {self.commit_notify_delay!r}"
            )


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
