"""N-member test clusters in one ``trio.run``: :func:`open_cluster` and :class:`TestCluster`.

Theory of operation
-------------------
:func:`open_cluster` opens a nursery, starts every member (:class:`~._member.TestMember`, an
in-process :class:`microtrio.App` with real mutual TLS on ``127.0.0.1``, port 0), bootstraps
the first one and joins the others through the real API with join tokens issued by the first,
exactly as an operator would. It then waits until every member is listed with a settled role
and a leader is agreed, and hands the :class:`TestCluster` to the test. Leaving the block stops
every member (cancellation; the daemons close their databases in a shielded ``finally``).

Faults act on the Raft peer channel through one shared :class:`~microtrio.testing.Faults` (the
transport's fault layer), handed to every member as its public ``DaemonArgs.faults`` (a member
restarted from its state directory gets it again): :meth:`TestCluster.pause` isolates a
member (nothing reaches it and nothing leaves it; its HTTPS API still answers),
:meth:`TestCluster.partition` cuts the links between groups, :meth:`TestCluster.heal`
restores them. :meth:`TestCluster.kill` cancels a member's scope and
:meth:`TestCluster.restart` runs it again from its state directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, final

import trio

from .._cluster._roles import RoleTargets
from .._daemon import DaemonArgs
from .._errors import (
    MicrotrioError,
    NoLeaderError,
    TimeoutError_,
    ValidationError,
)
from .._replication import Faults
from ._member import TestMember

__all__ = ["ArgsFactory", "TestCluster", "open_cluster"]

logger = logging.getLogger("microtrio.testing")

#: Per-member daemon arguments: a fixed ``DaemonArgs`` or ``f(member_name) -> DaemonArgs``.
ArgsFactory = DaemonArgs | Callable[[str], DaemonArgs]

DEFAULT_VERSION = "0.0.0-test"
_POLL = 0.02
_ADDRESS = "127.0.0.1:0"


def _default_args(name: str) -> DaemonArgs:
    return DaemonArgs(version=DEFAULT_VERSION)


@final
class TestCluster:
    """A running test cluster. Members are in :attr:`members` (``cluster[0]``,
    ``cluster["member2"]``); every wait takes a ``timeout`` and raises
    :class:`microtrio.TimeoutError_` when it runs out."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, nursery: trio.Nursery, root: Path, args: Callable[[str], DaemonArgs]
    ) -> None:
        self.nursery = nursery
        self.root = root
        self.members: list[TestMember] = []
        self.faults = Faults()
        self._args = args

    def __getitem__(self, key: int | str) -> TestMember:
        if isinstance(key, int):
            return self.members[key]
        for member in self.members:
            if member.name == key:
                return member
        raise KeyError(key)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Any:
        return iter(self.members)

    def running(self) -> list[TestMember]:
        return [m for m in self.members if m.running]

    # -- forming ------------------------------------------------------------------------

    def _new_member(self, name: str) -> TestMember:
        if any(m.name == name for m in self.members):
            raise ValidationError(f"A member named {name!r} exists already")
        args = dataclasses.replace(self._args(name), faults=self.faults)
        member = TestMember(name, self.root / name, args)
        self.members.append(member)
        return member

    async def _start(self, member: TestMember) -> None:
        await self.nursery.start(member.serve)
        if member.address:
            return
        status = await member.app.status()
        member.address = str(status.get("address") or "")

    async def bootstrap(self, name: str) -> TestMember:
        """Start a new member and bootstrap a cluster with it (the first member)."""
        member = self._new_member(name)
        await self._start(member)
        await member.app.new_cluster(name, _ADDRESS)
        member.address = str((await member.app.status())["address"])
        logger.info("%s: bootstrapped at %s", name, member.address)
        return member

    async def add_member(self, name: str, *, via: TestMember | None = None) -> TestMember:
        """Start a new member and join it with a token issued by ``via`` (default: the
        first running member). Does not wait for its role: see :meth:`wait_formed`."""
        issuer = via or self.running()[0]
        member = self._new_member(name)
        await self._start(member)
        token = await issuer.app.new_join_token(name)
        await member.app.join_cluster(name, _ADDRESS, token)
        member.address = str((await member.app.status())["address"])
        logger.info("%s: joined at %s", name, member.address)
        return member

    async def remove_member(
        self, member: TestMember, *, force: bool = False, stop: bool = True
    ) -> None:
        """``DELETE /core/1.0/cluster/{name}`` through another running member; the member
        leaves :attr:`members` and (``stop``) is stopped once it has reset itself."""
        others = [m for m in self.running() if m is not member]
        via = others[0] if others else member
        resets = member.daemon.reset_count if member.running else 0
        async with via.local_client() as client:
            await client.remove_member(member.name, force=force)
        self.members.remove(member)
        if stop and member.running:
            await member.daemon.wait_reset(resets + 1)
            await member.kill()

    async def members_view(self, member: TestMember | None = None) -> list[dict[str, Any]]:
        """``GET /core/1.0/cluster`` as seen by ``member`` (default: the first running)."""
        source = member or self.running()[0]
        return await source.app.cluster_members()

    async def wait_formed(self, *, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until every running member is listed, the roles reached the leader's targets
        (for 3 members: three voters; see :class:`~microtrio._cluster._roles.RoleTargets`),
        and the running members agree on a leader."""
        names = {m.name for m in self.running()}
        targets = RoleTargets()
        voters, standbys = targets.voters_for(len(names)), targets.standbys_for(len(names))
        with _deadline(timeout, f"{voters} voters and {standbys} stand-bys"):
            while True:
                try:
                    listed = await self.members_view()
                except MicrotrioError:
                    listed = []
                roles = {str(m.get("name")): str(m.get("role", "")).lower() for m in listed}
                counts = list(roles.values())
                if (
                    names <= set(roles)
                    and counts.count("voter") == voters
                    and counts.count("stand-by") == standbys
                ):
                    break
                await trio.sleep(_POLL * 5)
            await self.wait_for_leader(timeout=timeout)

    # -- leader -------------------------------------------------------------------------

    def leader(self, *, among: Iterable[TestMember] | None = None) -> TestMember:
        """The member every running, unpaused member (or every running one of ``among``,
        say one side of a partition) currently names as leader
        (:class:`microtrio.NoLeaderError` when there is none or they disagree)."""
        chosen = self.running() if among is None else [m for m in among if m.running]
        voters = [m for m in chosen if not self._isolated(m)]
        ids: set[int] = set()
        for member in voters:
            try:
                ids.add(member.leader_id())
            except MicrotrioError:
                ids.add(0)
        if len(ids) != 1 or 0 in ids:
            raise NoLeaderError(f"No agreed leader (members name {sorted(ids)})")
        (leader_id,) = ids
        for member in voters:
            if member.node_id == leader_id:
                return member
        raise NoLeaderError(f"The leader {leader_id} is not a running member")

    async def wait_for_leader(
        self,
        *,
        exclude: Iterable[TestMember] = (),
        among: Iterable[TestMember] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> TestMember:
        """Wait until the running, unpaused members (or those of ``among``) agree on a leader
        not in ``exclude``."""
        excluded = {m.node_id for m in exclude}
        group = None if among is None else list(among)
        with _deadline(timeout, "a leader"):
            while True:
                try:
                    leader = self.leader(among=group)
                except NoLeaderError:
                    pass
                else:
                    if leader.node_id not in excluded:
                        return leader
                await trio.sleep(_POLL)

    def followers(self) -> list[TestMember]:
        leader = self.leader()
        return [m for m in self.running() if m is not leader]

    # -- faults -------------------------------------------------------------------------

    async def kill(self, member: TestMember) -> None:
        """Stop ``member`` at once (its cancel scope is cancelled)."""
        await member.kill()

    async def stop(self, member: TestMember) -> None:
        """Stop ``member`` gracefully (a leader hands leadership over first)."""
        await member.stop()

    async def restart(self, member: TestMember) -> None:
        """Run a stopped member again from its state directory (killed first if running)."""
        if member.running:
            await member.kill()
        await self._start(member)

    def _isolated(self, member: TestMember) -> bool:
        others = [m.node_id for m in self.members if m is not member]
        return bool(others) and all(
            self.faults.rule(member.node_id, o).blocked
            and self.faults.rule(o, member.node_id).blocked
            for o in others
        )

    def pause(self, member: TestMember) -> None:
        """Cut ``member`` off the Raft channel in both directions (it keeps running, its
        HTTPS API answers, it cannot lead, vote or replicate) until :meth:`resume`."""
        self.faults.isolate(member.node_id, [m.node_id for m in self.members if m is not member])

    def resume(self, member: TestMember) -> None:
        for other in self.members:
            if other is not member:
                self.faults.unblock(member.node_id, other.node_id)
                self.faults.unblock(other.node_id, member.node_id)

    def partition(self, *groups: Sequence[TestMember]) -> None:
        """Cut every Raft link between members of different ``groups``; members in no group
        form one more group of their own."""
        listed = {m.node_id for group in groups for m in group}
        rest = [m for m in self.members if m.node_id not in listed]
        sides = [list(g) for g in groups] + ([rest] if rest else [])
        for i, side_a in enumerate(sides):
            for side_b in sides[i + 1 :]:
                self.faults.partition([m.node_id for m in side_a], [m.node_id for m in side_b])

    def heal(self) -> None:
        """Remove every partition and pause."""
        self.faults.heal()

    # -- reading every member -----------------------------------------------------------

    async def read_all(
        self, sql: str, params: Sequence[Any] = (), *, members: Iterable[TestMember] | None = None
    ) -> dict[str, list[tuple[Any, ...]]]:
        """The query's rows on every running member's local database (stale reads), by name."""
        chosen = list(members) if members is not None else self.running()
        return {m.name: await m.read(sql, params) for m in chosen}

    async def wait_replicated(
        self,
        *,
        members: Iterable[TestMember] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> int:
        """Wait until the chosen members (default: running and unpaused) have applied
        everything the most advanced of them had applied when called; returns that index."""
        chosen = (
            list(members)
            if members is not None
            else [m for m in self.running() if not self._isolated(m)]
        )
        target = max((m.applied_index for m in chosen), default=0)
        with _deadline(timeout, f"every member to apply index {target}"):
            while any(m.applied_index < target for m in chosen):  # noqa: ASYNC110 - no event
                await trio.sleep(_POLL)
        return target


class _deadline:
    """``trio.fail_after`` raising :class:`microtrio.TimeoutError_` with what we waited for."""

    def __init__(self, timeout: float, what: str) -> None:
        self._scope = trio.fail_after(timeout)
        self._timeout = timeout
        self._what = what

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self._scope.__exit__(*exc)
        except trio.TooSlowError as err:
            raise TimeoutError_(f"Waited {self._timeout:g}s for {self._what}") from err


@asynccontextmanager
async def open_cluster(
    size: int = 3,
    *,
    tmp_path: str | os.PathLike[str],
    args: ArgsFactory | None = None,
    names: Sequence[str] | None = None,
    heartbeat_interval: float | None = 0.5,
    timeout: float = 90.0,  # noqa: ASYNC109
) -> AsyncIterator[TestCluster]:
    """Start a ``size``-member cluster under ``tmp_path`` and yield it; stop it on exit.

    ``args``: the members' :class:`microtrio.DaemonArgs` (or a function of the member name;
    default a bare application). ``heartbeat_interval`` overrides the args' (fast role
    settlement in tests; None keeps the args' own). ``names`` default to ``member1..N``.
    ``timeout`` bounds the forming (bootstrap, joins, roles, leader)."""
    if size < 1:
        raise ValidationError("A cluster has at least one member")
    chosen = list(names) if names is not None else [f"member{k}" for k in range(1, size + 1)]
    if len(chosen) != size or len(set(chosen)) != size:
        raise ValidationError(f"Need {size} distinct member names, got {chosen!r}")

    def make_args(name: str) -> DaemonArgs:
        base = args(name) if callable(args) else (args or _default_args(name))
        if heartbeat_interval is not None:
            base = dataclasses.replace(base, heartbeat_interval=heartbeat_interval)
        return base

    root = Path(tmp_path)
    failure: MicrotrioError | None = None
    async with trio.open_nursery() as nursery:
        cluster = TestCluster(nursery, root, make_args)
        try:
            with _deadline(timeout, f"a {size}-member cluster to form"):
                await cluster.bootstrap(chosen[0])
                for name in chosen[1:]:
                    await cluster.add_member(name)
                await cluster.wait_formed(timeout=timeout)
        except MicrotrioError as exc:  # raised below, not wrapped in the nursery's group
            failure = exc
        else:
            yield cluster
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
