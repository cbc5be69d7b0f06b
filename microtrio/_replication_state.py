"""``ReplicationState``: what a member's Raft replication looks like from outside, read-only.

The daemon (:attr:`microtrio._daemon.Daemon.replication`) builds one on demand from its
replication driver's last known soft and hard state: no round trip to the driver task, no
awaiting, so tests and host applications can poll it freely. The fields are a snapshot; read
the property again for fresh values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from ._errors import MicrotrioError
from ._replication import RaftReplication

__all__ = ["ReplicationState", "replication_state"]


@final
@dataclass(frozen=True, slots=True)
class ReplicationState:
    """One member's view of the Raft replication at the moment it was read.

    ``node_id``: this member's Raft id (:func:`microtrio.testing.node_id_for` of its name).
    ``role``: ``"leader"``, ``"follower"``, ``"pre-candidate"`` or ``"candidate"``.
    ``leader_id``: the leader this member knows of (0: none known), with its core address
    and member name when known (``leader_address``/``leader_name``, None otherwise).
    ``term``: the current Raft term. ``applied_index``: the last log index applied to this
    member's database.
    """

    node_id: int
    role: str
    term: int
    applied_index: int
    leader_id: int
    leader_address: str | None
    leader_name: str | None

    @property
    def is_leader(self) -> bool:
        """Whether this member leads (as far as it knows)."""
        return self.role == "leader"


def replication_state(
    replication: RaftReplication, name_of: Callable[[int], str | None]
) -> ReplicationState | None:
    """The state of ``replication`` (None before its database is attached); ``name_of`` maps
    a node id to a member name."""
    try:
        driver = replication.driver
    except MicrotrioError:  # no database attached yet
        return None
    leader = driver.leader_id
    return ReplicationState(
        node_id=replication.id,
        role=driver.role.value,
        term=driver.term,
        applied_index=driver.applied_index,
        leader_id=leader,
        leader_address=driver.address_of(leader) if leader else None,
        leader_name=name_of(leader) if leader else None,
    )
