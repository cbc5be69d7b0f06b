"""Automatic roles and removal: pure planners, the Raft membership seam, the removal flow.

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
(:func:`plan_removal`, :func:`hand_over_leadership`).

:class:`Removal` is the leader's side of ``DELETE /core/1.0/cluster/{name}`` (reference
7.5) with injected dependencies: safeguards and the plan, a promotion if the removal would
leave no voter, leadership handed over when the leader removes itself (the caller then
forwards the request to the new leader), ``PreRemove`` on the target, the row deleted and
the member removed from Raft, the truststore fan-out, the target told to reset itself,
and ``PostRemove`` on the leader and every remaining member. With ``force`` an unreachable
target or failing hooks do not stop it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol, final
from urllib.parse import quote

import trio

from .._errors import BadRequestError, MicrotrioError, NotFoundError
from ..raft import Role
from ._members import delete_member_by_address, get_member, list_members

if TYPE_CHECKING:
    import apsw

    from .._replication import RaftReplication
    from ._heartbeat import BlockingRunner, ClientFactory, ClusterDatabase
    from ._truststore import Truststore

__all__ = [
    "RaftMembership",
    "Removal",
    "RemovalOutcome",
    "RemovalPlan",
    "ReplicationMembership",
    "RoleChange",
    "RoleTargets",
    "hand_over_leadership",
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

    async def caught_up(self, max_lag: int = 256) -> set[int]:
        """On the leader: members whose log is within ``max_lag`` entries of the leader's
        (for ``Heartbeat(caught_up=...)``); empty elsewhere."""
        status = await self._replication.status()
        return {
            node
            for node, progress in status.progress.items()
            if progress.match + max_lag >= status.last_index
        } | {status.id}

    async def recently_active(self) -> set[int]:
        """On the leader: members the transport heard from within an election timeout."""
        status = await self._replication.status()
        return {node for node, p in status.progress.items() if p.recent_active} | {status.id}


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



async def hand_over_leadership(
    membership: RaftMembership, own_id: int, *, timeout: float = 5.0  # noqa: ASYNC109
) -> int | None:
    """On graceful shutdown: if this member leads, hand leadership to another voter first.

    Returns the new leader's id, or None (not the leader, nobody to hand over to, or it did
    not finish within ``timeout``; shutdown goes on regardless, logged)."""
    if membership.leader() != own_id:
        return None
    with trio.move_on_after(timeout):
        try:
            new = await membership.transfer_leadership(None)
            logger.info("raft %d: leadership handed over to %d before shutdown", own_id, new)
            return new
        except MicrotrioError as exc:
            logger.warning("raft %d: no leadership hand-over before shutdown: %s", own_id, exc)
            return None
    logger.warning("raft %d: leadership hand-over timed out after %gs", own_id, timeout)
    return None


@final
@dataclass(frozen=True, slots=True)
class RemovalOutcome:
    """``moved_to``: leadership went to this node id and the request must be forwarded to
    it (nothing was removed yet). ``warnings``: steps that failed but were forced through."""

    removed: bool
    moved_to: int | None = None
    warnings: tuple[str, ...] = ()


async def _thread(fn: Callable[[], object], /) -> object:
    return await trio.to_thread.run_sync(fn)


@final
class Removal:
    """The leader's side of member removal (see the module docstring).

    ``online()`` names the node ids known alive (heartbeats); ``post_remove(force)`` runs
    the application's PostRemove locally. Remote calls go through ``client_factory``.
    """

    def __init__(
        self,
        *,
        own_name: str,
        db: ClusterDatabase,
        membership: RaftMembership,
        truststore: Truststore,
        client_factory: ClientFactory,
        post_remove: Callable[[bool], Awaitable[None]],
        node_id: Callable[[str], int],
        online: Callable[[], Collection[int]] | None = None,
        lock: trio.Lock | None = None,
        run_blocking: BlockingRunner | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.own_name = own_name
        self._db = db
        self._membership = membership
        self._truststore = truststore
        self._client_factory = client_factory
        self._post_remove = post_remove
        self._node_id = node_id
        self._online = online
        self.lock = lock if lock is not None else trio.Lock()
        self._run_blocking = run_blocking
        self.timeout = timeout

    async def _blocking(self, fn: Callable[[], object]) -> None:
        if self._run_blocking is not None:
            await self._run_blocking(fn)
        else:
            await _thread(fn)

    async def _call(self, address: str, method: str, path: str, body: object = None,
                    params: Mapping[str, str] | None = None) -> None:
        with trio.fail_after(self.timeout):
            client = self._client_factory(address)
            try:
                await client.query(method, path, body, params=params, timeout=self.timeout)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await client.aclose()

    async def _step(self, what: str, force: bool, warnings: list[str],
                    call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except (MicrotrioError, trio.TooSlowError) as exc:
            if not force:
                raise
            warnings.append(f"{what}: {exc}")
            logger.warning("%s: %s failed (forced on): %s", self.own_name, what, exc)

    async def remove(
        self, name: str, *, force: bool = False, address: str | None = None
    ) -> RemovalOutcome:
        """Remove member ``name``; BadRequestError when a safeguard refuses.

        ``address`` (late-v3's escape hatch): it must match the member's row when there is
        one; without a row, a leftover of ``name`` (a Raft member or truststore entry,
        e.g. of a join that failed half-way) is removed, the target at ``address`` being
        told to reset itself.
        """
        own_id = self._node_id(self.own_name)
        rows = await self._db.read(list_members)
        row = next((r for r in rows if r.name == name), None)
        conf = await self._membership.configuration()
        target_id = self._node_id(name)
        if row is not None and address is not None and row.address != address:
            raise BadRequestError(
                f"Member {name!r} has the address {row.address}, not {address}")
        if row is None:
            leftover = target_id in conf or self._truststore.by_name(name) is not None
            if address is None or not leftover:
                raise NotFoundError(f"No cluster member named {name!r}")
            logger.warning("%s: removing the leftovers of %s at %s (no member row)",
                           self.own_name, name, address)
        target = row.address if row is not None else str(address)
        online = self._online() if self._online is not None else conf.keys()
        plan = plan_removal(conf, target_id, leader=own_id, online=online,
                            members=len(rows) if row is not None else None)
        if plan.promote is not None:
            async with self.lock:
                await self._membership.change_role(plan.promote, Role.VOTER)
        if plan.transfer_to is not None:
            moved = await self._membership.transfer_leadership(plan.transfer_to)
            return RemovalOutcome(removed=False, moved_to=moved)
        warnings: list[str] = []
        await self._step("PreRemove on " + name, force, warnings, partial(
            self._call, target, "POST", "/core/internal/hooks/pre-remove", {"force": force}))
        await self._db.transaction(lambda conn: _delete_row(conn, name, target))
        if plan.in_raft:
            async with self.lock:
                await self._membership.remove_member(target_id)
        if self._truststore.by_name(name) is not None:
            await self._blocking(partial(self._truststore.remove, name))
        remaining = [r for r in await self._db.read(list_members) if r.name != self.own_name]
        async with trio.open_nursery() as nursery:
            for other in remaining:
                nursery.start_soon(self._step, f"truststore removal on {other.name}", True,
                                   warnings, partial(self._call, other.address, "DELETE",
                                                     f"/core/internal/truststore/{quote(name)}"))
        params = {"force": "1"} if force else None
        await self._step("reset of " + name, force, warnings, partial(
            self._call, target, "PUT", f"/core/internal/cluster/{quote(name)}", None,
            params))
        await self._post_remove(force)
        for other in remaining:
            await self._step("PostRemove on " + other.name, force, warnings, partial(
                self._call, other.address, "POST", "/core/internal/hooks/post-remove",
                {"force": force}))
        logger.info("%s: removed member %s", self.own_name, name)
        return RemovalOutcome(removed=True, warnings=tuple(warnings))


def _delete_row(conn: apsw.Connection, name: str, address: str) -> None:
    if get_member(conn, name) is not None:
        delete_member_by_address(conn, address)
