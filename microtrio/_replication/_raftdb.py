"""The Raft committer and the glue that makes a member's database replicated.

Theory of operation
-------------------

:class:`RaftReplication` owns one member's Raft pieces: the durable log store (``<state>/
database/raft/``), the peer :class:`~._transport.Transport` (the core listener hands it the
connections that negotiate ``RAFT_ALPN``: ``stream_handlers={RAFT_ALPN: transport.serve_stream}``) and the
:class:`~._driver.RaftDriver`. The :class:`~microtrio._db.Database` is built with
``committer_factory=replication.committer_factory``: that is where the driver meets the
database's :class:`~microtrio._db.Applier`. Then ``await nursery.start(db.run)`` and
``await nursery.start(replication.run)``.

:class:`RaftCommitter` is the database's :class:`~microtrio._db.Committer`:

* ``commit(payload)`` gets the payload proposed - directly on the leader, or by forwarding
  it on the Raft channel to the leader (:class:`~._driver.ForwardPropose`, answered with the
  index and term it was proposed at) - and then waits until the entry at that index is
  applied locally. It returns the index when the applied entry has the proposal's term
  (Raft's log matching: same index and term, same entry). When another entry was committed
  at that index the write is known lost: :class:`~microtrio.NoLeaderError`. When it cannot
  tell in time (leader lost mid-write, the forwarded request or its answer lost, the entry
  hidden by a snapshot) it raises :class:`~microtrio.OutcomeUnknownError`, never a plain
  failure. Proposals that the leader refused for sure (not the leader, a transfer runs) are
  retried until ``leader_wait`` runs out, then :class:`~microtrio.NoLeaderError`.
  A forwarded request that gets no answer is never sent again (it may have been proposed).
* ``read_barrier()`` asks the node for a ReadIndex (on any member; a follower asks the
  leader), retrying lost requests, then waits until the local applied index reaches it.

Node ids are derived from member names (:func:`node_id_for`): stable, 63-bit, non-zero.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar, final

import trio

from .._certs import client_ssl_context, load_cert_key_pair, pinned_server_name
from .._errors import (
    MicrotrioError,
    NoLeaderError,
    OutcomeUnknownError,
    UnavailableError,
    ValidationError,
)
from .._log import node_label
from ..raft import ConfState, NotLeaderError, ProposalDroppedError, Role, StateRole, Status
from ._driver import RaftDriver
from ._driver_config import DriverConfig, RemoteHandler, StateMachine
from ._faults import Faults
from ._frames import DEFAULT_MAX_FRAME_SIZE
from ._storage import AsyncLogStore, LogStore
from ._transport import Transport, TransportConfig
from ._wire import WIRE_CODEC, ForwardResult, ForwardStatus, Wire

__all__ = [
    "CommitterConfig",
    "LeaderInfo",
    "RaftCommitter",
    "RaftReplication",
    "open_member_replication",
    "node_id_for",
]

logger = logging.getLogger("microtrio.replication")

_A = TypeVar("_A")


def node_id_for(name: str) -> int:
    """A member's Raft id from its name: the first 63 bits of a SHA-256, never 0."""
    digest = hashlib.sha256(b"microtrio-raft-node\x00" + name.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)) or 1


@final
@dataclass(frozen=True, slots=True)
class CommitterConfig:
    """Deadlines (seconds) of the Raft committer."""

    #: How long a write or read waits for a leader before NoLeaderError.
    leader_wait: float = 5.0
    #: How long the leader has to answer a forwarded write before its outcome is unknown.
    forward_timeout: float = 5.0
    #: From proposal to local apply; beyond it the outcome is unknown.
    apply_timeout: float = 10.0
    #: One ReadIndex round trip before the request is sent again.
    read_attempt: float = 1.0


@final
@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who leads, as this member knows it (``id`` 0: nobody known)."""

    id: int
    address: str | None


@final
class RaftCommitter:
    """The database's committer on top of a :class:`RaftDriver` (see the module docstring)."""

    def __init__(self, driver: RaftDriver, config: CommitterConfig | None = None) -> None:
        self._driver = driver
        self.config = config if config is not None else CommitterConfig()
        self._pause = driver.config.tick_interval

    @property
    def driver(self) -> RaftDriver:
        return self._driver

    async def commit(self, payload: bytes) -> int:
        index, term = await self._propose(payload)
        outcome: bool | None = None
        with trio.move_on_after(self.config.apply_timeout):
            outcome = await self._driver.wait_entry(index, term)
            if outcome is True:
                return index
            if outcome is False:
                raise NoLeaderError(
                    f"leadership changed: another entry was committed at {index}; "
                    "the write was not applied"
                )
        raise OutcomeUnknownError(
            f"cannot tell whether the write proposed at {index} (term {term}) committed"
        )

    async def _propose(self, payload: bytes) -> tuple[int, int]:
        """(index, term) the payload was proposed at; NoLeaderError when surely not."""
        driver = self._driver
        deadline = trio.current_time() + self.config.leader_wait
        while True:
            leader = driver.leader_id
            if leader == driver.id:
                try:
                    return await driver.propose(payload)
                except (NotLeaderError, ProposalDroppedError) as exc:
                    logger.debug("proposal refused (%s), retrying", exc)
            elif leader and driver.address_of(leader) is None:
                # nowhere to send it: surely not proposed; wait for the address or a leader
                logger.debug("leader %d has no known address yet", leader)
            elif leader:
                result = await self._forward(leader, payload)
                if result.status == ForwardStatus.OK:
                    return result.index, result.term
                logger.debug("leader %d refused a forwarded write (%d)", leader, result.status)
            await self._pause_until(deadline)

    async def _forward(self, leader: int, payload: bytes) -> ForwardResult:
        """The leader's answer to a forwarded write (see :meth:`_ask`)."""
        return await self._ask(
            leader, partial(self._driver.forward, leader, payload), self.config.forward_timeout
        )

    async def _ask(self, leader: int, call: Callable[[], Awaitable[_A]], limit: float) -> _A:
        """The leader's answer to a forwarded write. OutcomeUnknownError when the link
        failed under it, once this member no longer sees ``leader`` as the leader (the
        driver fails the request then: a crashed leader is noticed at the election timeout,
        not after the whole ``limit``) or when ``limit`` passes first: the write may have
        been proposed."""
        with trio.move_on_after(limit):
            try:
                return await call()
            except UnavailableError as exc:
                raise OutcomeUnknownError(f"forwarded write interrupted: {exc}") from exc
        raise OutcomeUnknownError(
            f"leader {leader} did not answer a forwarded write within {limit} s"
        )

    def serve_remote(self, handler: RemoteHandler) -> None:
        self._driver.serve_remote(handler)

    async def execute_remote(self, request: bytes) -> bytes | None:
        """Send a statement request to the leader (None when this member leads); return the
        leader's reply once the local applied index reached the leader's at its answer."""
        driver = self._driver
        deadline = trio.current_time() + self.config.leader_wait
        timeout = self.config.forward_timeout + self.config.apply_timeout
        while True:
            leader = driver.leader_id
            if leader == driver.id:
                return None
            if leader and driver.address_of(leader) is not None:
                result = await self._ask(
                    leader, partial(driver.execute_remote, leader, request), timeout
                )
                if result.status == ForwardStatus.OK:
                    with trio.move_on_after(self.config.apply_timeout):
                        await driver.wait_applied(result.index)
                        return result.data
                    raise UnavailableError(
                        f"the write committed at the leader, but this member did not apply "
                        f"index {result.index} within {self.config.apply_timeout} s"
                    )
                logger.debug("leader %d refused a statement request (%d)", leader, result.status)
            await self._pause_until(deadline)

    async def _pause_until(self, deadline: float) -> None:
        """Wait for a leadership change (or a tick); NoLeaderError past ``deadline``."""
        now = trio.current_time()
        if now >= deadline:
            raise NoLeaderError("no raft leader accepted the request within the deadline")
        with trio.move_on_at(min(deadline, now + self._pause)):
            await self._driver.wait_changed()

    async def read_barrier(self) -> None:
        driver = self._driver
        deadline = trio.current_time() + self.config.leader_wait
        while True:
            index: int | None = None
            try:
                with trio.move_on_after(self.config.read_attempt):
                    index = await driver.read_index()
            except NotLeaderError:
                index = None
            if index is not None:
                break
            await self._pause_until(deadline)
        if driver.applied_index >= index:
            return  # the usual case: no deadline to set up
        with trio.move_on_after(self.config.apply_timeout):
            await driver.wait_applied(index)
            return
        raise UnavailableError(f"applied index did not reach the read index {index} in time")


@final
class RaftReplication:
    """One member's Raft replication: storage, transport, driver and the committer.

    ``directory`` is the Raft store (the daemon uses ``<state>/database/raft``).
    ``ssl_context`` is the client context used to dial peers (this member's certificate,
    the cluster certificate pinned); ``is_trusted(der)`` decides inbound connections.
    ``bootstrap`` holds the founding voters' ids (every founding member passes the same
    ids; tell it their addresses with :meth:`set_address`); a member that joins later
    passes ``None`` and is added by the leader with :meth:`add_member`. ``address`` (this
    member's own core address) may be assigned until the database is attached.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        directory: str | os.PathLike[str],
        ssl_context: ssl.SSLContext,
        is_trusted: Callable[[bytes], bool],
        bootstrap: Collection[int] | None = None,
        node_id: int | None = None,
        driver_config: DriverConfig | None = None,
        committer_config: CommitterConfig | None = None,
        transport_config: TransportConfig | None = None,
        faults: Faults | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.id = node_id if node_id is not None else node_id_for(name)
        self._directory = Path(directory)
        self._bootstrap = frozenset(bootstrap) if bootstrap is not None else None
        self._addresses: dict[int, str] = {}
        if self._bootstrap is not None and self.id not in self._bootstrap:
            raise ValidationError(f"{name}: bootstrap members do not include this member")
        self._driver_config = driver_config if driver_config is not None else DriverConfig()
        self._committer_config = committer_config
        self._rng = rng if rng is not None else random.Random()
        self.transport = Transport[Wire](
            self.id,
            codec=WIRE_CODEC,
            ssl_context=ssl_context,
            is_trusted=is_trusted,
            config=transport_config,
            faults=faults,
            rng=random.Random(self._rng.getrandbits(64)),
            name=name,
        )
        self._store = AsyncLogStore(LogStore(self._directory))
        self._driver: RaftDriver | None = None
        self._committer: RaftCommitter | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._started = False

    # -- wiring --

    def committer_factory(self, applier: StateMachine) -> RaftCommitter:
        """``Database(committer_factory=...)``: builds the driver on the database's applier."""
        if self._driver is not None:
            raise UnavailableError(f"{self.name}: replication is already attached to a database")
        bootstrap = None
        if self._bootstrap is not None:
            bootstrap = ConfState.of_voters(self._bootstrap)
        driver = RaftDriver(
            self.id,
            store=self._store,
            state_machine=applier,
            transport=self.transport,
            config=self._driver_config,
            bootstrap=bootstrap,
            rng=random.Random(self._rng.getrandbits(64)),
            name=self.name,
        )
        driver.set_address(self.id, self.address)
        for node_id, address in self._addresses.items():
            if node_id != self.id:
                driver.set_address(node_id, address)
        self._driver = driver
        self._committer = RaftCommitter(driver, self._committer_config)
        return self._committer

    @property
    def driver(self) -> RaftDriver:
        if self._driver is None:
            raise UnavailableError(f"{self.name}: replication has no database yet")
        return self._driver

    @property
    def committer(self) -> RaftCommitter:
        if self._committer is None:
            raise UnavailableError(f"{self.name}: replication has no database yet")
        return self._committer

    async def run(
        self,
        *,
        address_source: Callable[[], Awaitable[Mapping[int, str]]] | None = None,
        address_interval: float = 1.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the transport and the driver (after the database is running) until cancelled
        or :meth:`aclose`; the store is closed on the way out. With ``address_source``,
        peers' addresses follow it (see :meth:`follow_addresses`)."""
        driver = self.driver
        self._started = True
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.transport.run)
                    await nursery.start(driver.run)
                    if address_source is not None:
                        nursery.start_soon(
                            partial(
                                self.follow_addresses, address_source, interval=address_interval
                            )
                        )
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._store.aclose()
                await self.transport.aclose()
            self._done.set()

    async def aclose(self, *, hand_over: bool = False) -> None:
        """Stop :meth:`run` (first handing leadership over, if asked) and wait until the
        store is closed. Bound it with a deadline; a never-started replication returns."""
        if hand_over:
            await self.hand_over()
        self._scope.cancel()
        if self._started:
            await self._done.wait()

    # -- queries --

    def leader(self) -> LeaderInfo:
        driver = self.driver
        leader = driver.leader_id
        return LeaderInfo(leader, driver.address_of(leader) if leader else None)

    async def wait_leader(self) -> LeaderInfo:
        """Wait (at most the committer's ``leader_wait``) until a leader is known."""
        wait = self.committer.config.leader_wait
        with trio.move_on_after(wait):
            await self.driver.wait_leader()
            return self.leader()
        raise NoLeaderError(f"{self.name}: no raft leader within {wait} s")

    async def status(self) -> Status:
        """Term, role, commit, applied, membership and (on the leader) per-peer progress."""
        return await self.driver.status()

    # -- membership (call on the leader; NotLeaderError names the leader otherwise) --

    def set_address(self, node_id: int, address: str) -> None:
        """Tell the transport where a member listens (members learn addresses from the
        cluster's member table); may be called before the database is attached."""
        self._addresses[node_id] = address
        if self._driver is not None:
            self._driver.set_address(node_id, address)

    def sync_addresses(self, addresses: Mapping[int, str]) -> None:
        """:meth:`set_address` for every entry that is new or changed (own id skipped)."""
        for node_id, address in addresses.items():
            if node_id != self.id and address and self._addresses.get(node_id) != address:
                self.set_address(node_id, address)

    async def follow_addresses(
        self, fetch: Callable[[], Awaitable[Mapping[int, str]]], *, interval: float = 1.0
    ) -> None:
        """A task: every ``interval`` seconds, :meth:`sync_addresses` with ``fetch()`` (the
        daemon reads the member table, stale, so every member learns every address)."""
        while True:
            try:
                self.sync_addresses(await fetch())
            except MicrotrioError as exc:
                logger.debug("%s: cannot read member addresses: %s", self.name, exc)
            await trio.sleep(interval)

    async def add_member(self, node_id: int, address: str, role: Role = Role.STANDBY) -> None:
        """Add a member (as a non-voter by default: promote it once it caught up)."""
        self.set_address(node_id, address)
        await self._change(node_id, role)

    async def promote(self, node_id: int) -> None:
        await self._change(node_id, Role.VOTER)

    async def demote(self, node_id: int, role: Role = Role.STANDBY) -> None:
        if role is Role.VOTER:
            raise ValidationError("demote to stand-by or spare")
        await self._change(node_id, role)

    async def remove_member(self, node_id: int) -> None:
        await self._change(node_id, None)
        if node_id != self.id:
            self._addresses.pop(node_id, None)
            self.driver.forget_address(node_id)

    async def _change(self, node_id: int, role: Role | None) -> None:
        driver = self.driver
        config = self.committer.config
        deadline = trio.current_time() + config.leader_wait
        while True:
            try:
                index, term = await driver.change_role(node_id, role)
                break
            except ProposalDroppedError:
                if trio.current_time() >= deadline:
                    raise
                with trio.move_on_after(driver.config.tick_interval):
                    await driver.wait_changed()
        if index == 0:
            return
        outcome: bool | None = None
        with trio.move_on_after(config.apply_timeout):
            outcome = await driver.wait_entry(index, term)
        if outcome is False:
            raise NoLeaderError(f"membership change at {index} was lost to a leader change")
        if outcome is None:
            raise OutcomeUnknownError(f"cannot tell whether the membership change at {index} took")
        logger.info("%s: member %s is now %s", self.name, node_label(node_id), role or "removed")

    async def hand_over(self) -> None:
        """Before leaving or shutting down: if this member leads and another voter exists,
        hand leadership over (bounded by ``leader_wait``; failures are only logged)."""
        driver = self._driver
        if driver is None or not driver.running or not driver.is_leader:
            return
        try:
            new = await self.transfer_leadership()
        except MicrotrioError as exc:
            logger.info("%s: leadership not handed over: %s", self.name, exc)
        else:
            logger.info("%s: leadership handed over to %s", self.name, node_label(new))

    async def transfer_leadership(self, to: int | None = None) -> int:
        """Hand leadership to ``to`` (default: the most up-to-date other voter); return the
        new leader once it is known here."""
        driver = self.driver
        if to is None:
            status = await driver.status()
            if status.role is not StateRole.LEADER:
                raise NotLeaderError(status.leader_id)
            candidates = sorted(
                (p.match, node)
                for node, p in status.progress.items()
                if node != self.id and node in status.conf.voters
            )
            if not candidates:
                raise UnavailableError(f"{self.name}: no other voter to hand leadership to")
            to = candidates[-1][1]
        await driver.transfer_leadership(to)
        with trio.move_on_after(self.committer.config.leader_wait):
            while driver.leader_id != to:
                await driver.wait_changed()
            return to
        raise UnavailableError(f"{self.name}: leadership transfer to {to} did not finish")


async def open_member_replication(
    name: str,
    address: str,
    *,
    database_dir: str | os.PathLike[str],
    server_files: tuple[str | os.PathLike[str], str | os.PathLike[str]],
    cluster_crt: str | os.PathLike[str],
    is_trusted: Callable[[bytes], bool],
    bootstrap: bool,
    driver_config: DriverConfig | None = None,
    committer_config: CommitterConfig | None = None,
    faults: Faults | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> RaftReplication:
    """A daemon member's replication, its store in ``<database_dir>/raft``: peers are
    dialled presenting the member's server certificate (``server_files``: crt, key) with
    the cluster certificate pinned; ``bootstrap`` makes this member the founding voter;
    ``max_frame_size`` caps the Raft channel's frames."""
    server_pair = await trio.to_thread.run_sync(load_cert_key_pair, *server_files)
    cluster_cert = await trio.to_thread.run_sync(Path(cluster_crt).read_bytes)
    node_id = node_id_for(name)
    return RaftReplication(
        name,
        address,
        directory=Path(database_dir) / "raft",
        ssl_context=client_ssl_context(server_pair, cluster_cert),
        is_trusted=is_trusted,
        bootstrap=[node_id] if bootstrap else None,
        node_id=node_id,
        driver_config=driver_config,
        committer_config=committer_config,
        transport_config=TransportConfig(
            server_hostname=pinned_server_name(cluster_cert), max_frame_size=max_frame_size
        ),
        faults=faults,
    )
