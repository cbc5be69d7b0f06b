"""A member's cluster membership: its Raft replication and the cluster components on it.

Theory of operation
-------------------
An initialised member owns one :class:`MemberCluster` while its database is open. It is
built in three steps by the daemon:

1. :meth:`MemberCluster.open` loads this member's key pair and the cluster certificate and
   builds the :class:`~microtrio._replication.RaftReplication` (store in
   ``database/raft``; the founding member bootstraps as the sole voter; a joiner or a
   restarted member starts from what Raft persisted and learns its peers' addresses from
   the truststore and, once the database is open, from the member table).
2. The daemon builds its :class:`~microtrio._db.Database` with
   :meth:`MemberCluster.committer_factory`, starts ``db.run`` and then
   :meth:`MemberCluster.run_replication` in its nursery, and opens the database.
3. :meth:`MemberCluster.start_components` builds the cluster logic on the open database,
   all sharing ONE membership lock (admission, removal and the heartbeat's role changes go
   through the Raft log one at a time): :class:`~._cluster._admission.Admission`,
   :class:`~._cluster._roles.Removal`, :class:`~._cluster._heartbeat.Heartbeat` (rounds
   only act on the leader) and the :class:`~._cluster._upgrade.SchemaUpdateTrigger`.

:meth:`MemberCluster.aclose` hands leadership over (a graceful stop of the leader), stops
the components, and closes the replication (the daemon closes the database in between).

Cluster certificate rotation (``_cluster/_rotation.py``): :meth:`MemberCluster.refresh_tls`
reloads ``cluster.crt`` and the pin bundle (old and new certificates during a rotation) and
hands them to every client the member builds from then on and to the Raft transport.

The Raft channel (connections to the core listener that negotiate the ALPN protocol
``RAFT_ALPN``) is served before any replication exists (the listener starts first, at init
or join); :class:`RaftChannelProxy` is the listener's stream handler for it: it refuses
connections until a transport is attached and follows resets.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, final

import trio

from ._api._state import RoleStatus
from ._certs import (
    CertKeyPair,
    cert_pem,
    client_ssl_context,
    cluster_pin_bundle,
    fetch_remote_certificate,
    load_cert_key_pair,
    pinned_server_name,
)
from ._client import Client
from ._cluster._admission import Admission, KeyPairEntry
from ._cluster._heartbeat import (
    Heartbeat,
    HeartbeatConfig,
    MemberClient,
    RoleTransition,
    raft_addresses,
)
from ._cluster._roles import Removal, ReplicationMembership
from ._cluster._rotation import follow_rotation
from ._cluster._upgrade import SchemaUpdateTrigger, notify_members
from ._errors import MicrotrioError, NoLeaderError, UnavailableError
from ._hooks import HookType
from ._replication import (
    CommitterConfig,
    DriverConfig,
    Faults,
    RaftReplication,
    node_id_for,
    open_member_replication,
)
from ._replication._frames import DEFAULT_MAX_FRAME_SIZE, GOODBYE_GOING_AWAY
from ._replication._transport import refuse_stream
from .raft import Role

if TYPE_CHECKING:
    from ._api._state import State
    from ._cluster._truststore import Truststore
    from ._db import Applier, Committer, Database
    from ._hooks import HookRunner
    from ._replication import Transport
    from ._state import StateDir

__all__ = ["MemberCluster", "RaftChannelProxy", "member_client_factory"]

logger = logging.getLogger("microtrio.cluster")

#: Where a member that missed a certificate rotation asks for the current pair.
CERTIFICATE_PATH = "/core/internal/cluster-certificate"


@final
class _OwnedClient:
    """A notification-mode client that closes the base client it was derived from."""

    def __init__(self, base: Client, forwarded_address: str) -> None:
        self._base = base
        self._client = base.notifier(forwarded_address)

    async def query(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - the HTTP client's own timeout
    ) -> Any:
        return await self._client.query(method, path, body, params=params, timeout=timeout)

    async def aclose(self) -> None:
        await self._base.aclose()


def member_client_factory(
    pair: CertKeyPair, pinned: bytes | Callable[[], bytes], own_address: str
) -> Callable[[str], MemberClient]:
    """Mutual-TLS notification clients of other members (this member's ``server.crt``
    presented, ``cluster.crt`` pinned; ``pinned`` may be a callable giving the current
    pin bundle, so that clients built after a certificate rotation pin the new one)."""

    def factory(address: str) -> MemberClient:
        pins = pinned() if callable(pinned) else pinned
        return _OwnedClient(Client.tls(address, cert=pair, pinned=pins), own_address)

    return factory


@final
class RaftChannelProxy:
    """The core listener's handler for Raft channel connections: the current transport's
    :meth:`~microtrio._replication.Transport.serve_stream`, or a refusal ("going away")
    while none is attached (before the database opens, after a reset)."""

    def __init__(self) -> None:
        self._transport: Transport[Any] | None = None

    def attach(self, transport: Transport[Any] | None) -> None:
        self._transport = transport

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.closed

    async def serve_stream(self, stream: trio.abc.Stream, extensions: Mapping[str, Any]) -> None:
        transport = self._transport
        if transport is None:
            await refuse_stream(stream, GOODBYE_GOING_AWAY, "no raft transport yet")
            return
        await transport.serve_stream(stream, extensions)


def additional_key_pairs(state_dir: StateDir) -> dict[str, KeyPairEntry]:
    """Every ``certificates/<name>.crt`` key pair (a joiner gets them all, reference 7.4)."""
    found: dict[str, KeyPairEntry] = {}
    directory = state_dir.certificates_dir
    if not directory.is_dir():
        return found
    for crt in sorted(directory.glob("*.crt")):
        name = crt.stem
        _, key, ca = state_dir.certificate_files(name)
        try:
            found[name] = KeyPairEntry(
                cert=crt.read_text(encoding="ascii"),
                key=key.read_text(encoding="ascii"),
                ca=ca.read_text(encoding="ascii") if ca.exists() else "",
            )
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("cannot read the key pair of %s: %s", name, exc)
    return found


def _is_trusted(
    truststore: Truststore, wall_clock: Callable[[], datetime.datetime]
) -> Callable[[bytes], bool]:
    """The Raft channel's trust decision: a truststore certificate, byte for byte, within
    its validity (as the router decides for HTTP requests)."""
    return lambda der: truststore.trusted_member([der], now=wall_clock()) is not None


@final
class MemberCluster:
    """The replication and cluster components of one initialised member (module docstring)."""

    def __init__(
        self,
        *,
        state: State,
        replication: RaftReplication,
        truststore: Truststore,
        hooks: HookRunner,
        pair: CertKeyPair,
        cluster_pair: CertKeyPair,
        pins: bytes,
        interval: float,
        wall_clock: Callable[[], datetime.datetime],
    ) -> None:
        self._state = state
        self.replication = replication
        self.membership = ReplicationMembership(replication)
        self._truststore = truststore
        self._hooks = hooks
        self._pair = pair
        self._cluster_pair = cluster_pair
        self._pins = pins
        self.interval = interval
        self._wall_clock = wall_clock
        self.lock = trio.Lock()
        #: Held by a heartbeat round and by a removal: a round rewrites the truststore from
        #: the member rows, which must not race with a removal taking a member out of both.
        self.round_lock = trio.Lock()
        self.admission: Admission | None = None
        self.removal: Removal | None = None
        self.heartbeat: Heartbeat | None = None
        self.trigger = SchemaUpdateTrigger(
            name=state.name,
            child_env={"MICROTRIO_MEMBER": state.name, "STATE_DIR": str(state.state_dir.path)},
        )
        #: One cluster certificate rotation at a time (``_cluster/_rotation.py``).
        self.rotation_lock = trio.Lock()
        self._online: set[int] | None = None
        self._scope = trio.CancelScope()

    @classmethod
    async def open(
        cls,
        *,
        state: State,
        state_dir: StateDir,
        truststore: Truststore,
        hooks: HookRunner,
        bootstrap: bool,
        interval: float,
        wall_clock: Callable[[], datetime.datetime],
        driver_config: DriverConfig | None = None,
        committer_config: CommitterConfig | None = None,
        faults: Faults | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> MemberCluster:
        """Build the member's replication (see the module docstring, step 1)."""
        replication = await open_member_replication(
            state.name,
            state.address,
            database_dir=state_dir.database_dir,
            server_files=(state_dir.server_crt, state_dir.server_key),
            cluster_crt=state_dir.cluster_crt,
            is_trusted=_is_trusted(truststore, wall_clock),
            bootstrap=bootstrap,
            driver_config=driver_config,
            committer_config=committer_config,
            faults=faults,
            max_frame_size=max_frame_size,
        )
        for member in truststore.members():
            if member.name != state.name and member.address:
                replication.set_address(node_id_for(member.name), member.address)
        pair = await trio.to_thread.run_sync(
            load_cert_key_pair, state_dir.server_crt, state_dir.server_key
        )
        cluster_pair = await trio.to_thread.run_sync(
            load_cert_key_pair, state_dir.cluster_crt, state_dir.cluster_key
        )
        pins = await trio.to_thread.run_sync(cluster_pin_bundle, state_dir)
        cluster = cls(
            state=state,
            replication=replication,
            truststore=truststore,
            hooks=hooks,
            pair=pair,
            cluster_pair=cluster_pair,
            pins=pins,
            interval=interval,
            wall_clock=wall_clock,
        )
        await cluster._pin_transport()  # a rotation may have been under way when it stopped
        return cluster

    # -- the cluster certificate ---------------------------------------------------------

    @property
    def cluster_pair(self) -> CertKeyPair:
        """The cluster key pair this member presents (and hands to joiners)."""
        return self._cluster_pair

    @property
    def pins(self) -> bytes:
        """What this member pins when it dials another: ``cluster.crt``, plus the other
        certificate while a rotation is under way (a PEM bundle)."""
        return self._pins

    async def refresh_tls(self) -> None:
        """Reload ``cluster.crt``/``cluster.key`` and the pins after a rotation step:
        clients built from now on, and new Raft links, use them."""
        state_dir = self._state.state_dir
        self._cluster_pair = await trio.to_thread.run_sync(
            load_cert_key_pair, state_dir.cluster_crt, state_dir.cluster_key
        )
        self._pins = await trio.to_thread.run_sync(cluster_pin_bundle, state_dir)
        await self._pin_transport()

    async def _pin_transport(self) -> None:
        context = await trio.to_thread.run_sync(client_ssl_context, self._pair, self._pins)
        name = pinned_server_name(self._pins) if context.check_hostname else None
        self.replication.transport.set_client_tls(context, name)

    # -- the database's side -------------------------------------------------------------

    def committer_factory(self, applier: Applier) -> Committer:
        """``Database(committer_factory=...)``."""
        return self.replication.committer_factory(applier)

    async def run_replication(
        self, db: Database, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the replication (after ``db.run``); peers' addresses follow the member table."""

        async def addresses() -> Mapping[int, str]:
            return await db.read(raft_addresses, stale=True)

        await self.replication.run(address_source=addresses, task_status=task_status)

    async def catch_up(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """A joiner: wait until this member's log has what the leader had committed
        (a read barrier; NoLeaderError after ``timeout``)."""
        deadline = trio.current_time() + timeout
        while True:
            try:
                await self.replication.committer.read_barrier()
                return
            except (NoLeaderError, UnavailableError):
                if trio.current_time() >= deadline:
                    raise
                logger.info("%s: still catching up with the leader", self._state.name)

    async def wait_for_leader(self, *, follow_after: float = 3.0) -> None:
        """A restarted member: wait (as long as it takes, logged) until a leader is known;
        writes, and so opening the database, need one. Every ``follow_after`` seconds
        without one, check whether the cluster certificate was rotated while this member
        was down (:meth:`follow_rotation`)."""
        waited = 0.0
        while True:
            with trio.move_on_after(follow_after):
                await self.replication.driver.wait_leader()
                return
            waited += follow_after
            if await self.follow_rotation():
                continue
            if waited >= 10:
                waited = 0.0
                logger.warning("%s: waiting for a Raft leader (a quorum of voters must run)",
                               self._state.name)

    async def follow_rotation(self) -> bool:
        """Adopt a cluster certificate rotated while this member was down, if the other
        members present it and the rotation links prove it (``_cluster/_rotation.py``)."""
        state = self._state
        peers = [m.address for m in self._truststore.members()
                 if m.name != state.name and m.address]

        async def ask(address: str, der: bytes) -> Any:
            async with Client.tls(address, cert=self._pair, pinned=cert_pem(der)) as client:
                return await client.query("GET", CERTIFICATE_PATH, timeout=10)

        async def replace(cert: str, key: str) -> None:
            await state.control.replace_certificate("cluster", cert, key, None)

        async with self.rotation_lock:
            return await follow_rotation(
                state.state_dir, peers, fetch=fetch_remote_certificate, ask=ask,
                replace=replace, refresh=self.refresh_tls, member=state.name)

    # -- the cluster components ----------------------------------------------------------

    def client_factory(self) -> Callable[[str], MemberClient]:
        return member_client_factory(self._pair, lambda: self._pins, self._state.address)

    def online(self) -> Collection[int]:
        """Node ids known alive by the last heartbeat round (all of Raft before one ran)."""
        own = node_id_for(self._state.name)
        if self._online is None:
            return {own} | {node_id_for(m.name) for m in self._truststore.members()}
        return self._online | {own}

    async def start_components(
        self, db: Database, *, nursery: trio.Nursery, extensions: Collection[str]
    ) -> None:
        """Build admission, removal and heartbeats on the open database and start the
        heartbeat and schema-update tasks in ``nursery`` (cancelled by :meth:`aclose`)."""
        state = self._state
        factory = self.client_factory()

        async def credentials() -> tuple[str, str, Mapping[str, KeyPairEntry]]:
            pair = self._cluster_pair
            extra = await trio.to_thread.run_sync(additional_key_pairs, state.state_dir)
            return pair.cert.decode(), pair.key.decode(), extra

        self.admission = Admission(
            own_name=state.name,
            db=db,
            truststore=self._truststore,
            membership=self.membership,
            extensions=list(extensions),
            credentials=credentials,
            wall_clock=self._wall_clock,
            lock=self.lock,
        )

        async def post_remove(force: bool) -> None:
            await self._hooks.run(HookType.POST_REMOVE, state, force)

        self.removal = Removal(
            own_name=state.name,
            db=db,
            membership=self.membership,
            truststore=self._truststore,
            client_factory=factory,
            post_remove=post_remove,
            node_id=node_id_for,
            online=self.online,
            lock=self.lock,
        )

        async def on_heartbeat(changes: Mapping[str, RoleTransition]) -> None:
            statuses = {n: RoleStatus(c.old, c.new) for n, c in changes.items()}
            await self._hooks.run(HookType.ON_HEARTBEAT, state, statuses)

        self.heartbeat = Heartbeat(
            name=state.name,
            address=state.address,
            db=db,
            membership=self.membership,
            truststore=self._truststore,
            client_factory=factory,
            wall_clock=self._wall_clock,
            on_heartbeat=on_heartbeat,
            caught_up=self.membership.caught_up,
            config=HeartbeatConfig(interval=self.interval),
            lock=self.lock,
        )
        others = [m.address for m in self._truststore.members() if m.name != state.name]
        await nursery.start(self._run_components, others, factory)

    async def _run_components(
        self,
        others: list[str],
        factory: Callable[[str], MemberClient],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Heartbeats and the schema-update trigger; and once, ``PATCH
        /core/internal/database`` to every other member so that members waiting for an
        upgrade check again (reference 7.1, step 6)."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.trigger.run)
                await nursery.start(self._heartbeats)
                nursery.start_soon(notify_members, others, factory)
                nursery.start_soon(self._follow_when_leaderless)
                task_status.started()

    async def _follow_when_leaderless(self, period: float = 5.0) -> None:
        """A running member cut off by a certificate rotation it missed (it was
        unreachable then) knows no leader any more: after two ``period`` checks without
        one, see whether it can follow the rotation (:meth:`follow_rotation`)."""
        leaderless = 0
        while True:
            await trio.sleep(period)
            if self.replication.leader().id:
                leaderless = 0
                continue
            leaderless += 1
            if leaderless >= 2:
                try:
                    if await self.follow_rotation():
                        leaderless = 0
                except MicrotrioError as exc:
                    logger.warning("%s: cannot check for a missed certificate rotation: %s",
                                   self._state.name, exc, exc_info=True)

    async def _heartbeats(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The heartbeat loop; after each round, remember who is online (for removal)."""
        heartbeat = self.heartbeat
        assert heartbeat is not None
        task_status.started()
        next_start = trio.current_time()
        while True:
            try:
                async with self.round_lock:
                    result = await heartbeat.run_round()
                heartbeat.last_round = result
                # A round may have changed the truststore (a member removed): close the
                # Raft connections of members no longer trusted.
                self.replication.transport.revalidate_inbound()
                if not result.skipped:
                    alive = {self._state.name, *result.answered, *result.not_contacted}
                    self._online = {node_id_for(n) for n in alive}
            except MicrotrioError as exc:
                logger.warning("%s: heartbeat round failed: %s", self._state.name, exc,
                               exc_info=True)
            next_start = max(next_start + heartbeat.config.interval, trio.current_time())
            await trio.sleep_until(next_start)

    def is_leader(self) -> bool:
        return self.replication.leader().id == node_id_for(self._state.name)

    def leader_address(self) -> str | None:
        return self.replication.leader().address

    async def wait_leader_address(self) -> str:
        info = await self.replication.wait_leader()
        if info.address is None:
            raise NoLeaderError("the Raft leader's address is not known")
        return info.address

    # -- stop ----------------------------------------------------------------------------

    async def hand_over(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Before a graceful stop: if this member leads, hand leadership to the most
        up-to-date voter heard from within an election timeout (none: nothing to do, so
        the last member of a stopping cluster does not wait for a dead one)."""
        own = node_id_for(self._state.name)
        if self.membership.leader() != own:
            return
        try:
            active = await self._active_voters(own)
            if not active:
                logger.info("%s: no active voter to hand leadership to", self._state.name)
                return
            with trio.move_on_after(timeout):
                new = await self.membership.transfer_leadership(active[-1][1])
                logger.info("%s: leadership handed over to %d before shutdown",
                            self._state.name, new)
                return
            logger.warning("%s: leadership hand-over timed out", self._state.name)
        except MicrotrioError as exc:  # never blocks the shutdown
            logger.warning("%s: no hand-over: %s", self._state.name, exc)

    async def _active_voters(self, own: int, window: float = 1.0) -> list[tuple[int, int]]:
        """``(match, node)`` of the other voters heard from recently, most up to date
        last. The leader clears "recently active" at every quorum check, so a look right
        after one sees nobody: look again for up to ``window`` seconds (heartbeats answer
        within a tick or two) unless there is no other voter at all."""
        deadline = trio.current_time() + window
        while True:
            status = await self.replication.status()
            conf = status.conf.as_dict()
            if not any(r is Role.VOTER for n, r in conf.items() if n != own):
                return []
            active = sorted((p.match, node) for node, p in status.progress.items()
                            if node != own and p.recent_active and conf.get(node) is Role.VOTER)
            if active or trio.current_time() >= deadline:
                return active
            await trio.sleep(0.05)

    async def aclose(self, *, hand_over: bool) -> None:
        """Stop the components and the replication (bounded by the caller)."""
        if hand_over:
            await self.hand_over()
        self._scope.cancel()
        await self.replication.aclose()

