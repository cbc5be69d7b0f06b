"""The trio shell around the Raft core: durable storage, the peer transport, the driver
and the Raft committer of the replicated database (DESIGN.md sections 1-3).

Public names for the layers above:

* :class:`RaftReplication` - one member's replication (storage + transport + driver);
  ``Database(committer_factory=replication.committer_factory)``, serve
  ``{RAFT_ALPN: replication.transport.serve_stream}`` as the core listener's
  ``stream_handlers`` (its context offering ``CORE_ALPN_PROTOCOLS``), then
  ``await nursery.start(replication.run)`` after ``db.run``. Membership hooks:
  ``add_member``, ``promote``, ``demote``, ``remove_member``, ``transfer_leadership``,
  ``leader()``, ``status()``, ``set_address``.
* :class:`RaftCommitter`, :class:`CommitterConfig` - the database's Committer.
* :class:`RaftDriver`, :class:`DriverConfig` - the Ready loop.
* :func:`node_id_for` - a member's stable Raft id from its name.
* :data:`RAFT_ALPN`, :data:`CORE_ALPN_PROTOCOLS`, :class:`Transport`,
  :class:`TransportConfig`, :class:`Faults`.
* :class:`LogStore`, :class:`AsyncLogStore`, :func:`open_log_store`.
"""

from __future__ import annotations

from ._driver import RaftDriver as RaftDriver
from ._driver_config import DriverConfig as DriverConfig
from ._faults import Faults as Faults
from ._raftdb import CommitterConfig as CommitterConfig
from ._raftdb import LeaderInfo as LeaderInfo
from ._raftdb import RaftCommitter as RaftCommitter
from ._raftdb import RaftReplication as RaftReplication
from ._raftdb import node_id_for as node_id_for
from ._raftdb import open_member_replication as open_member_replication
from ._storage import AsyncLogStore as AsyncLogStore
from ._storage import LogStore as LogStore
from ._storage import open_log_store as open_log_store
from ._transport import CORE_ALPN_PROTOCOLS as CORE_ALPN_PROTOCOLS
from ._transport import RAFT_ALPN as RAFT_ALPN
from ._transport import Transport as Transport
from ._transport import TransportConfig as TransportConfig
from ._wire import WIRE_CODEC as WIRE_CODEC
from ._wire import Wire as Wire

__all__ = [
    "CORE_ALPN_PROTOCOLS",
    "RAFT_ALPN",
    "WIRE_CODEC",
    "AsyncLogStore",
    "CommitterConfig",
    "DriverConfig",
    "Faults",
    "LeaderInfo",
    "LogStore",
    "RaftCommitter",
    "RaftDriver",
    "RaftReplication",
    "Transport",
    "TransportConfig",
    "Wire",
    "node_id_for",
    "open_log_store",
    "open_member_replication",
]
