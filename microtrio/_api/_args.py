"""``DaemonArgs``: what an application hands its member daemon (microcluster's ``DaemonArgs``)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import final

from .._db import SchemaUpdate
from .._hooks import Hooks
from .._replication import Faults
from ._limits import DEFAULT_LIMITS, Limits
from ._resources import Server

__all__ = ["DaemonArgs"]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@final
@dataclass(frozen=True, slots=True)
class DaemonArgs:
    """What the application hands the daemon (microcluster's ``DaemonArgs``).

    ``version`` is required. ``heartbeat_interval`` 0 means 10 s. ``socket_group`` falls back
    to ``$SOCKET_GROUP``, then the process group. ``wall_clock`` gives UTC wall-clock time
    (token expiry, certificate validity); tests inject their own. ``limits``: see
    ``docs/security.md``. ``faults``: fault injection on this member's Raft peer channel
    (:class:`microtrio.testing.Faults`: drop, delay or block messages per directed link between
    Raft node ids, see :func:`microtrio.testing.node_id_for`); for tests only, None in
    production. Several in-process members may share one object; rules change at runtime.
    """

    version: str
    schema_updates: Sequence[SchemaUpdate] = ()
    api_extensions: Sequence[str] = ()
    servers: Mapping[str, Server] = field(default_factory=dict)
    hooks: Hooks | None = None
    heartbeat_interval: float = 0.0
    pre_init_listen_address: str = ""
    socket_group: str | int | None = None
    hook_timeout: float | None = 30.0
    drain_timeout: float = 5.0
    truststore_poll_interval: float = 1.0
    wall_clock: Callable[[], datetime.datetime] = _utc_now
    #: Per-listener limits (body, SQL text, connections, in-flight requests, slow clients).
    limits: Limits = DEFAULT_LIMITS
    #: Linearizable reads from the leader's lease instead of a heartbeat round per read
    #: (faster; safe only while the members' clocks run at about the same rate: see
    #: docs/howto/performance.md).
    lease_read: bool = False
    #: Fault injection on the Raft peer channel (tests only; see the class docstring).
    faults: Faults | None = None

    @property
    def heartbeat(self) -> float:
        """The heartbeat period in seconds (``heartbeat_interval``, 0 meaning 10 s)."""
        return self.heartbeat_interval if self.heartbeat_interval > 0 else 10.0
