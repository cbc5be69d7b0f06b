"""Heartbeats (reference 6.7, authenticated), automatic roles and member status.

Theory of operation
-------------------
:class:`Heartbeat` runs on every member; each ``interval`` it does a round, which acts only
on the Raft leader:

1. skip unless this member leads, the database has member rows and Raft a configuration;
2. map the Raft roles onto the member rows by node id (a ``PENDING`` row that Raft does
   not know yet is left out and stays ``PENDING``);
3. skip if the leader's own row was heartbeated less than one interval ago (another round
   just ran, e.g. right after a leadership change);
4. rewrite the leader's truststore from the rows (pending members included);
5. compute the highest internal and external schema versions;
6. ``POST /core/internal/heartbeat`` concurrently to every other member (mutual TLS: the
   client factory presents this member's certificate, the receiver accepts trusted
   members only) with the member list and the versions, each bounded by two intervals;
   members heartbeated within the last interval are skipped; failures are logged;
7. ONE transaction: roles of the mapped members, the heartbeat time of those that
   answered (and of the leader), and the purge of expired join tokens;
8. ``OnHeartbeat`` with ``{name: RoleTransition(old, new)}``;
9. the role planner (:func:`~._roles.plan_role_change`) with the members that answered as
   the online ones, and at most ONE membership change applied (under the membership lock
   shared with admission and removal).

Heartbeat times come from the injected wall clock at the start of the round, so a round
every ``interval`` never skips the next one. Rounds start every ``interval`` seconds of
trio's clock.

The receiver (:func:`receive_heartbeat`) replaces its truststore with the leader's member
list (so every truststore converges) and asks for a schema update when the cluster is
ahead of it (:class:`~._upgrade.SchemaUpdateTrigger`).

:func:`member_statuses` computes what ``cluster list`` shows per member: ``ONLINE``,
``UNREACHABLE``, ``UPGRADING`` or ``NEEDS UPGRADE``.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final

import trio

from .._errors import DatabaseNotOpenError, ForbiddenError, MicrotrioError, ValidationError
from .._replication import node_id_for
from ..raft import Role
from ._members import PENDING, MemberRow, format_time, list_members, parse_time
from ._members import purge_expired_tokens as _purge
from ._roles import RaftMembership, RoleChange, RoleTargets, plan_role_change
from ._truststore import TrustedMember, Truststore

if TYPE_CHECKING:
    import apsw

__all__ = [
    "HEARTBEAT_PATH",
    "BlockingRunner",
    "ClientFactory",
    "ClusterDatabase",
    "Heartbeat",
    "HeartbeatConfig",
    "HeartbeatInfo",
    "MemberClient",
    "MemberStatus",
    "RoleTransition",
    "RoundResult",
    "cluster_member_wire",
    "member_statuses",
    "raft_addresses",
    "receive_heartbeat",
]

logger = logging.getLogger("microtrio.cluster")

HEARTBEAT_PATH = "/core/internal/heartbeat"


T = TypeVar("T")


class ClusterDatabase(Protocol):
    """What the cluster logic needs of :class:`microtrio._db.Database`."""

    async def read(self, fn: Callable[[apsw.Connection], T], *, stale: bool = False) -> T: ...

    async def transaction(self, fn: Callable[[apsw.Connection], T]) -> T: ...


class BlockingRunner(Protocol):
    """Runs blocking file work off the event loop (default ``trio.to_thread.run_sync``)."""

    async def __call__(self, fn: Callable[[], T], /) -> T: ...


async def run_in_thread(fn: Callable[[], T], /) -> T:
    return await trio.to_thread.run_sync(fn)


class MemberClient(Protocol):
    """What the heartbeat needs of :class:`microtrio._client.Client`."""

    async def query(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float = ...,  # noqa: ASYNC109 - the HTTP client's own timeout
    ) -> Any: ...

    async def aclose(self) -> None: ...


#: Builds a mutual-TLS client of the member at an address.
ClientFactory = Callable[[str], MemberClient]


class MemberStatus(enum.StrEnum):
    """``ClusterMember.status`` values (reference appendix)."""

    ONLINE = "ONLINE"
    UNREACHABLE = "UNREACHABLE"
    NOT_TRUSTED = "NOT TRUSTED"
    NOT_FOUND = "NOT FOUND"
    UPGRADING = "UPGRADING"
    NEEDS_UPGRADE = "NEEDS UPGRADE"


@final
@dataclass(frozen=True, slots=True)
class RoleTransition:
    """A member's role before and after a heartbeat round (the hook's ``RoleStatus``)."""

    old: str
    new: str


def cluster_member_wire(row: MemberRow, status: str = "") -> dict[str, Any]:
    """The ``ClusterMember`` JSON shape of a member row."""
    return {
        "name": row.name,
        "address": row.address,
        "certificate": row.certificate,
        "role": row.role,
        "schema_internal_version": row.schema_internal,
        "schema_external_version": row.schema_external,
        "last_heartbeat": row.heartbeat,
        "status": status,
        "extensions": list(row.api_extensions),
        "secret": "",
    }


@final
@dataclass(frozen=True, slots=True)
class HeartbeatInfo:
    """The body of ``POST /core/internal/heartbeat`` (``HeartbeatInfo``)."""

    cluster_members: Mapping[str, TrustedMember] = field(default_factory=dict)
    max_schema_internal: int = 0
    max_schema_external: int = 0
    leader_address: str = ""
    begin_round: bool = False
    raw_members: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        members: dict[str, Any] = {}
        for address, member in self.cluster_members.items():
            entry = dict(self.raw_members.get(address, {}))
            entry.update(member.to_dict())
            members[address] = entry
        return {
            "begin_round": self.begin_round,
            "max_schema_internal": self.max_schema_internal,
            "max_schema_external": self.max_schema_external,
            "cluster_members": members,
            "leader_address": self.leader_address,
            "dqlite_roles": {},
        }

    @classmethod
    def from_dict(cls, data: object) -> HeartbeatInfo:
        if not isinstance(data, dict):
            raise ValidationError("Heartbeat body must be a JSON object")
        raw = data.get("cluster_members")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ValidationError("Heartbeat: 'cluster_members' must be a mapping")
        members = {str(k): TrustedMember.from_dict(v) for k, v in raw.items()}
        versions = [data.get("max_schema_internal", 0), data.get("max_schema_external", 0)]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in versions):
            raise ValidationError("Heartbeat: schema versions must be integers")
        leader = data.get("leader_address") or ""
        if not isinstance(leader, str):
            raise ValidationError("Heartbeat: 'leader_address' must be a string")
        return cls(
            cluster_members=members,
            max_schema_internal=int(versions[0]),
            max_schema_external=int(versions[1]),
            leader_address=leader,
            begin_round=bool(data.get("begin_round", False)),
        )


# -- the receiver ---------------------------------------------------------------------


async def receive_heartbeat(
    info: HeartbeatInfo,
    *,
    truststore: Truststore,
    own_versions: tuple[int, int],
    caller: TrustedMember | None,
    on_schema_behind: Callable[[], None] | None = None,
    run_blocking: BlockingRunner = run_in_thread,
) -> None:
    """Handle a leader's heartbeat on a member (the API has checked the caller is trusted).

    ``caller`` is the authenticated sender: when the body names a leader address it must
    be the caller's. The truststore becomes exactly the leader's member list (an empty
    list is refused: it would cut this member off). When the cluster's schema is ahead of
    ``own_versions`` (internal, external), ``on_schema_behind()`` is called.
    """
    if caller is None:
        raise ForbiddenError("Heartbeats are accepted from trusted cluster members only")
    if info.leader_address and info.leader_address != caller.address:
        raise ForbiddenError(
            f"Heartbeat from {caller.name} claims to come from leader {info.leader_address}"
        )
    members = list(info.cluster_members.values())
    if not members:
        raise ValidationError("Heartbeat carries no cluster members")
    await run_blocking(partial(truststore.replace_all, members))
    if info.max_schema_internal > own_versions[0] or info.max_schema_external > own_versions[1]:
        logger.info("heartbeat: cluster schema (%d, %d) is ahead of ours (%d, %d)",
                    info.max_schema_internal, info.max_schema_external, *own_versions)
        if on_schema_behind is not None:
            on_schema_behind()


def raft_addresses(
    conn: apsw.Connection, node_id: Callable[[str], int] = node_id_for
) -> dict[int, str]:
    """``{node id: address}`` of every member row (read function for
    ``RaftReplication.follow_addresses``: every member learns every address)."""
    return {node_id(r.name): r.address for r in list_members(conn)}


# -- member status -------------------------------------------------------------------


def _behind(row: MemberRow, top: tuple[int, int], top_exts: Sequence[str]) -> bool:
    if row.schema_internal < top[0] or row.schema_external < top[1]:
        return True
    return list(row.api_extensions) != list(top_exts)


def member_statuses(
    rows: Sequence[MemberRow],
    *,
    now: datetime.datetime,
    interval: float,
    own_name: str,
    reachable: Collection[str] | None = None,
) -> dict[str, MemberStatus]:
    """Per member: ``NEEDS UPGRADE`` (versions or extensions behind the most recent
    member), ``UPGRADING`` (up to date while others still need the upgrade), else
    ``ONLINE`` / ``UNREACHABLE``. Reachability is ``reachable`` (names that answered a
    probe) when given, else a heartbeat within two intervals; this member is reachable.
    """
    counted = [r for r in rows if r.role != PENDING] or list(rows)
    top = max(((r.schema_internal, r.schema_external) for r in counted), default=(0, 0))
    at_top = [r for r in counted if (r.schema_internal, r.schema_external) == top]
    top_exts = max((list(r.api_extensions) for r in at_top), key=len, default=[])
    behind = {r.name for r in counted if _behind(r, top, top_exts)}
    result: dict[str, MemberStatus] = {}
    for row in rows:
        if row.name in behind:
            result[row.name] = MemberStatus.NEEDS_UPGRADE
        elif behind and row.role != PENDING:
            result[row.name] = MemberStatus.UPGRADING
        elif _reachable(row, now, interval, own_name, reachable):
            result[row.name] = MemberStatus.ONLINE
        else:
            result[row.name] = MemberStatus.UNREACHABLE
    return result


def _reachable(
    row: MemberRow,
    now: datetime.datetime,
    interval: float,
    own_name: str,
    reachable: Collection[str] | None,
) -> bool:
    if row.name == own_name:
        return True
    if reachable is not None:
        return row.name in reachable
    last = parse_time(row.heartbeat)
    return last is not None and (now - last).total_seconds() <= 2 * interval


# -- the leader's round --------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    interval: float = 10.0
    targets: RoleTargets = field(default_factory=RoleTargets)


@final
@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did (``skipped`` names why it did nothing)."""

    skipped: str = ""
    answered: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    not_contacted: tuple[str, ...] = ()
    roles: Mapping[str, RoleTransition] = field(default_factory=dict)
    purged_tokens: int = 0
    change: RoleChange | None = None


def _apply_round(
    conn: apsw.Connection,
    roles: Mapping[str, str],
    alive: Collection[str],
    stamp: str,
    now: datetime.datetime,
) -> int:
    for name, role in roles.items():
        conn.execute("UPDATE core_cluster_members SET role = ? WHERE name = ?", (role, name))
    for name in alive:
        conn.execute("UPDATE core_cluster_members SET heartbeat = ? WHERE name = ?",
                     (stamp, name))
    return _purge(conn, now)


@final
class Heartbeat:
    """The heartbeat rounds of one member (see the module docstring).

    ``on_heartbeat(changes)`` runs the application's OnHeartbeat hook; ``caught_up()``
    (optional) names the stand-bys close enough to the leader's log to be promoted.
    ``lock`` serialises membership changes with admission and removal.
    """

    def __init__(
        self,
        *,
        name: str,
        address: str,
        db: ClusterDatabase,
        membership: RaftMembership,
        truststore: Truststore,
        client_factory: ClientFactory,
        wall_clock: Callable[[], datetime.datetime],
        on_heartbeat: Callable[[Mapping[str, RoleTransition]], Awaitable[None]] | None = None,
        caught_up: Callable[[], Awaitable[Collection[int]]] | None = None,
        config: HeartbeatConfig | None = None,
        lock: trio.Lock | None = None,
        node_id: Callable[[str], int] = node_id_for,
        run_blocking: BlockingRunner = run_in_thread,
    ) -> None:
        self.name = name
        self._run_blocking = run_blocking
        self.address = address
        self.config = config if config is not None else HeartbeatConfig()
        self.lock = lock if lock is not None else trio.Lock()
        self._db = db
        self._membership = membership
        self._truststore = truststore
        self._client_factory = client_factory
        self._wall_clock = wall_clock
        self._on_heartbeat = on_heartbeat
        self._caught_up = caught_up
        self._node_id = node_id
        self.last_round: RoundResult | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A round every ``interval`` seconds until cancelled; errors of a round are logged."""
        task_status.started()
        next_start = trio.current_time()
        while True:
            try:
                self.last_round = await self.run_round()
            except MicrotrioError as exc:
                logger.warning("%s: heartbeat round failed: %s", self.name, exc, exc_info=True)
            next_start = max(next_start + self.config.interval, trio.current_time())
            await trio.sleep_until(next_start)

    async def run_round(self) -> RoundResult:
        """One round; does nothing (``skipped``) unless this member is the Raft leader."""
        own_id = self._node_id(self.name)
        if self._membership.leader() != own_id:
            return RoundResult(skipped="not the leader")
        now = self._wall_clock()
        interval = datetime.timedelta(seconds=self.config.interval)
        try:
            rows = await self._db.read(list_members)
        except DatabaseNotOpenError:
            return RoundResult(skipped="database not open")
        conf = await self._membership.configuration()
        if not rows or not conf:
            return RoundResult(skipped="no members yet")
        by_name = {r.name: r for r in rows}
        own = by_name.get(self.name)
        last = parse_time(own.heartbeat) if own is not None else None
        if last is not None and now - last < interval:
            return RoundResult(skipped="heartbeated less than an interval ago")
        roles = {
            r.name: str(conf[self._node_id(r.name)]) for r in rows if self._node_id(r.name) in conf
        }
        for r in rows:
            if r.name not in roles and r.role != PENDING:
                logger.warning("%s: member %s is in the database but not in Raft", self.name,
                               r.name)
        await self._rewrite_truststore(rows)
        answered, failed, recent = await self._send_all(rows, now, interval)
        alive = {self.name, *answered}
        stamp = format_time(now)
        purged = await self._db.transaction(
            lambda conn: _apply_round(conn, roles, alive, stamp, now)
        )
        transitions = {n: RoleTransition(by_name[n].role, role) for n, role in roles.items()}
        await self._run_hook(transitions)
        online_names = alive | set(recent)
        change = await self._adjust_roles(conf, {self._node_id(n) for n in online_names})
        return RoundResult(
            answered=tuple(sorted(answered)),
            failed=tuple(sorted(failed)),
            not_contacted=tuple(sorted(recent)),
            roles=transitions,
            purged_tokens=purged,
            change=change,
        )

    async def _rewrite_truststore(self, rows: Sequence[MemberRow]) -> None:
        try:
            entries = [TrustedMember(r.name, r.address, r.certificate) for r in rows]
            await self._run_blocking(partial(self._truststore.replace_all, entries))
        except MicrotrioError as exc:
            logger.warning("%s: truststore rewrite failed: %s", self.name, exc, exc_info=True)

    async def _send_all(
        self, rows: Sequence[MemberRow], now: datetime.datetime, interval: datetime.timedelta
    ) -> tuple[set[str], set[str], set[str]]:
        top_internal = max(r.schema_internal for r in rows)
        top_external = max(r.schema_external for r in rows)
        info = HeartbeatInfo(
            cluster_members={r.address: TrustedMember(r.name, r.address, r.certificate)
                             for r in rows},
            raw_members={r.address: cluster_member_wire(r) for r in rows},
            max_schema_internal=top_internal,
            max_schema_external=top_external,
            leader_address=self.address,
        )
        body = info.to_dict()
        answered: set[str] = set()
        failed: set[str] = set()
        recent: set[str] = set()
        timeout = 2 * self.config.interval

        async def send(row: MemberRow) -> None:
            ok = False
            with trio.move_on_after(timeout):
                try:
                    client = self._client_factory(row.address)
                    try:
                        await client.query("POST", HEARTBEAT_PATH, body, timeout=timeout)
                        ok = True
                    finally:
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await client.aclose()
                except MicrotrioError as exc:
                    logger.info("%s: heartbeat to %s (%s) failed: %s", self.name, row.name,
                                row.address, exc)
            (answered if ok else failed).add(row.name)
            if not ok:
                logger.debug("%s: no heartbeat answer from %s", self.name, row.name)

        async with trio.open_nursery() as nursery:
            for row in rows:
                if row.name == self.name:
                    continue
                last = parse_time(row.heartbeat)
                if last is not None and now - last < interval:
                    recent.add(row.name)
                    continue
                nursery.start_soon(send, row)
        return answered, failed, recent

    async def _run_hook(self, transitions: Mapping[str, RoleTransition]) -> None:
        if self._on_heartbeat is None:
            return
        try:
            await self._on_heartbeat(transitions)
        except MicrotrioError as exc:
            logger.warning("%s: OnHeartbeat hook failed: %s", self.name, exc, exc_info=True)

    async def _adjust_roles(
        self, conf: Mapping[int, Role], online: Collection[int]
    ) -> RoleChange | None:
        caught_up = await self._caught_up() if self._caught_up is not None else None
        change = plan_role_change(
            conf,
            online=online,
            leader=self._node_id(self.name),
            caught_up=caught_up,
            targets=self.config.targets,
        )
        if change is None:
            return None
        async with self.lock:
            current = await self._membership.configuration()
            if dict(current) != dict(conf):  # someone else changed membership meanwhile
                return None
            try:
                await self._membership.change_role(change.node_id, change.role)
            except MicrotrioError as exc:
                logger.warning("%s: role change of %d to %s failed: %s", self.name,
                               change.node_id, change.role, exc, exc_info=True)
                return None
        logger.info("%s: member %d is now %s (%s)", self.name, change.node_id, change.role,
                    change.reason)
        return change
