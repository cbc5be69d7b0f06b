"""Automatic roles: a pure planner of membership changes, and the Raft membership seam.

Theory of operation
-------------------
The leader keeps a target number of voters (3, or 5 once the cluster has 7 or more
members; always odd and never more than there are members) and up to 2 stand-bys; the rest
are spares (DESIGN.md section 4, reference 6.8). On every heartbeat round it asks
:func:`plan_role_change` for the ONE next membership change and applies it; the next round
sees the result and asks again, so changes go through the Raft log one at a time.

The planner is pure: it gets the configuration (node id -> role), who is online (heartbeat
or transport liveness), the leader, which stand-bys have caught up, and the targets. It
first computes the desired voters: the leader and the online voters, then online caught-up
stand-bys, then (only while there is no online replacement, to avoid churn) the offline
voters, cut to the target. An even count is cut by one (an offline voter first) unless it
can still grow (an online spare, or a stand-by still catching up). The stand-bys wanted are
the next online members, up to the target. Then it picks one change, in this order:

1. promote a desired stand-by to voter (a voter set may be even for one round while an
   offline voter is being replaced: the promotion comes first because it only adds safety);
2. demote a voter that is not desired (offline ones first, never the leader);
3. with an even number of desired voters, promote an online spare to stand-by (it becomes
   a voter next);
4. promote wanted spares to stand-by, then demote unwanted stand-bys (offline first).

Every change keeps at least one voter and keeps a quorum of online voters (the leader
counts as online), so the leader can always commit the change it proposes. The leader
itself is never demoted: shutdown and removal hand leadership over first
(:func:`plan_removal`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

from .._errors import BadRequestError
from ..raft import Role

if TYPE_CHECKING:
    from .._replication import RaftReplication

__all__ = [
    "RaftMembership",
    "RemovalPlan",
    "ReplicationMembership",
    "RoleChange",
    "RoleTargets",
    "keeps_quorum",
    "plan_removal",
    "plan_role_change",
]

logger = logging.getLogger("microtrio.cluster")


class RaftMembership(Protocol):
    """The Raft membership operations the cluster logic needs (call them on the leader)."""

    async def add_member(self, node_id: int, address: str, role: Role) -> None: ...

    async def change_role(self, node_id: int, role: Role) -> None: ...

    async def remove_member(self, node_id: int) -> None: ...

    async def transfer_leadership(self, to: int | None) -> int: ...

    def leader(self) -> int:
        """The leader's node id as this member knows it (0: none)."""
        ...

    async def configuration(self) -> Mapping[int, Role]:
        """The current Raft configuration (node id -> role)."""
        ...


@final
class ReplicationMembership:
    """:class:`RaftMembership` on top of :class:`~microtrio._replication.RaftReplication`."""

    def __init__(self, replication: RaftReplication) -> None:
        self._replication = replication

    async def add_member(self, node_id: int, address: str, role: Role) -> None:
        await self._replication.add_member(node_id, address, role)

    async def change_role(self, node_id: int, role: Role) -> None:
        if role is Role.VOTER:
            await self._replication.promote(node_id)
        else:
            await self._replication.demote(node_id, role)

    async def remove_member(self, node_id: int) -> None:
        await self._replication.remove_member(node_id)

    async def transfer_leadership(self, to: int | None) -> int:
        return await self._replication.transfer_leadership(to)

    def leader(self) -> int:
        return self._replication.leader().id

    async def configuration(self) -> Mapping[int, Role]:
        status = await self._replication.status()
        return status.conf.as_dict()


@final
@dataclass(frozen=True, slots=True)
class RoleTargets:
    """How many voters and stand-bys the leader aims for."""

    voters: int = 3
    large_voters: int = 5
    large_cluster: int = 7
    standbys: int = 2

    def voters_for(self, members: int) -> int:
        """The voter target for a cluster of ``members``: odd, >= 1, <= members."""
        target = self.large_voters if members >= self.large_cluster else self.voters
        target = min(target, members)
        if target % 2 == 0:
            target -= 1
        return max(target, 1)

    def standbys_for(self, members: int) -> int:
        return max(0, min(self.standbys, members - self.voters_for(members)))


@final
@dataclass(frozen=True, slots=True)
class RoleChange:
    """One membership change: give ``node_id`` the role ``role``."""

    node_id: int
    role: Role
    reason: str


def keeps_quorum(conf: Mapping[int, Role], online: Collection[int]) -> bool:
    """True when the online voters of ``conf`` are a majority of its voters (>= 1 voter)."""
    voters = [n for n, r in conf.items() if r is Role.VOTER]
    up = sum(1 for n in voters if n in online)
    return bool(voters) and 2 * up > len(voters)


def plan_role_change(
    conf: Mapping[int, Role],
    *,
    online: Collection[int],
    leader: int,
    caught_up: Collection[int] | None = None,
    targets: RoleTargets | None = None,
) -> RoleChange | None:
    """The one next membership change towards the targets, or None (see module docstring).

    ``online``: members known alive (the leader always counts as online). ``caught_up``:
    stand-bys whose log is close enough to promote (None: all of them).
    """
    targets = targets if targets is not None else RoleTargets()
    if conf.get(leader) is not Role.VOTER:
        return None
    up = set(online) | {leader}
    ready = set(conf) if caught_up is None else set(caught_up)

    def ids(role: Role, alive: bool) -> list[int]:
        return sorted(n for n, r in conf.items() if r is role and (n in up) == alive)

    voters_up = [leader] + [n for n in ids(Role.VOTER, True) if n != leader]
    voters_down = ids(Role.VOTER, False)
    standbys_up, standbys_down = ids(Role.STANDBY, True), ids(Role.STANDBY, False)
    spares_up = ids(Role.SPARE, True)
    want = targets.voters_for(len(conf))

    # The desired voters: online voters, then caught-up online stand-bys, then (no churn
    # without a replacement) the offline voters; odd, unless it can still grow.
    desired = (voters_up + [n for n in standbys_up if n in ready] + voters_down)[:want]
    growing = bool(spares_up) or any(n not in ready for n in standbys_up)
    if len(desired) % 2 == 0 and not growing:
        drop = next(n for n in reversed(desired) if n != leader)
        drop = next((n for n in desired if n in voters_down), drop)
        desired.remove(drop)
    voters_after = len(desired)
    want_standbys = max(0, min(targets.standbys, len(conf) - voters_after))
    pool = voters_up + standbys_up + spares_up + voters_down + standbys_down
    others = [n for n in pool if n not in desired]
    wanted_standbys = set(others[:want_standbys])

    def safe(node: int, role: Role, reason: str) -> RoleChange | None:
        after = dict(conf)
        after[node] = role
        return RoleChange(node, role, reason) if keeps_quorum(after, up) else None

    candidates: list[tuple[int, Role, str]] = []
    for node in desired:  # 1. promotions to voter first: they only add safety
        if conf[node] is not Role.VOTER:
            reason = "a voter is offline" if voters_down else "voters below target"
            candidates.append((node, Role.VOTER, reason))
    for node in voters_down + list(reversed(voters_up)):  # 2. extra voters, offline first
        if node not in desired and node != leader:
            role = Role.STANDBY if node in wanted_standbys else Role.SPARE
            candidates.append((node, role, f"voters above target {voters_after}"))
    if len(desired) % 2 == 0 and spares_up:  # 3. grow towards an odd voter count
        candidates.append((spares_up[0], Role.STANDBY, "a stand-by can make voters odd"))
    for node in others:  # 4. stand-bys: promote wanted spares, demote unwanted stand-bys
        if node in wanted_standbys and conf[node] is Role.SPARE:
            candidates.append((node, Role.STANDBY, "stand-bys below target"))
    for node in standbys_down + list(reversed(standbys_up)):
        if node not in wanted_standbys and node not in desired:
            candidates.append((node, Role.SPARE, f"stand-bys above target {want_standbys}"))
    for node, role, reason in candidates:
        change = safe(node, role, reason)
        if change is not None:
            return change
    return None


@final
@dataclass(frozen=True, slots=True)
class RemovalPlan:
    """How to remove ``node_id`` from Raft safely, as steps in this order.

    ``promote``: first make this member a voter (the removal would leave no voter);
    ``transfer_to``: then hand leadership to this voter (the leader removes itself; the
    removal request then goes to the new leader); ``in_raft``: whether there is a Raft
    member to remove at all (a PENDING joiner may not have been added yet).
    """

    node_id: int
    in_raft: bool
    promote: int | None = None
    transfer_to: int | None = None


def plan_removal(
    conf: Mapping[int, Role],
    node_id: int,
    *,
    leader: int,
    online: Collection[int],
    members: int | None = None,
) -> RemovalPlan:
    """Check the removal safeguards and plan the steps (reference 6.8, issue 5).

    Never removes the last voter: when the member to remove is the only voter, an online
    stand-by (or else spare) is promoted first, so a two-member cluster survives losing
    either member. When the leader removes itself, leadership goes to another online voter
    first. ``members``: member rows in the database (at least one must remain).
    Raises :class:`BadRequestError` when the removal is not possible.
    """
    if members is not None and members <= 1:
        raise BadRequestError("Cannot remove the last cluster member")
    if node_id not in conf:
        return RemovalPlan(node_id=node_id, in_raft=False)
    rest = {n: r for n, r in conf.items() if n != node_id}
    if not rest:
        raise BadRequestError("Cannot remove the last member of the Raft configuration")
    up = set(online) | {leader}
    promote: int | None = None
    if not any(r is Role.VOTER for r in rest.values()):
        candidates = sorted(n for n, r in rest.items() if r is Role.STANDBY and n in up)
        candidates += sorted(n for n, r in rest.items() if r is Role.SPARE and n in up)
        if not candidates:
            raise BadRequestError(
                "Cannot remove the last voter: no online member can be promoted in its place"
            )
        promote = candidates[0]
        rest[promote] = Role.VOTER
    if not keeps_quorum(rest, up):
        raise BadRequestError(
            "Removing this member would leave too few online voters for a quorum"
        )
    transfer_to: int | None = None
    if node_id == leader:
        others = sorted(n for n, r in rest.items() if r is Role.VOTER and n in up)
        if not others:
            raise BadRequestError("No other online voter to hand leadership to")
        transfer_to = promote if promote is not None else others[0]
    return RemovalPlan(node_id=node_id, in_raft=True, promote=promote, transfer_to=transfer_to)

