"""The member daemon: the root nursery of one member.

Theory of operation
-------------------
:meth:`Daemon.run` takes the state directory's lock (a second daemon is refused), loads or
creates ``server.crt`` and the truststore, and opens the root nursery. Every listener is a task
in it with its own cancel scope and graceful-shutdown trigger (:class:`~microtrio._api._group.ListenerGroup`), so it can be
stopped and restarted on its own (pre-init listener at init, core listener at reset,
additional servers on ``PUT /core/1.0/daemon/servers``).

* Uninitialised: the control socket (and, if configured, the pre-init listener) serve; the
  database status is "not yet initialized".
* ``POST /core/control`` runs :meth:`Daemon.initialise`: bootstrap or join
  (:func:`~._join.initialise_member`; the daemon is its :class:`~._join.InitHost`). A failure
  after PreInit rolls back: PreRemove(force) and an in-process reset to a fresh daemon.
* The database is built in ONE place (:meth:`open_database`): replicated through Raft by the
  member's :class:`~._membership.MemberCluster`, which also runs admission, removal,
  heartbeats and roles. The core listener carries the Raft channel (ALPN ``RAFT_ALPN``).
* An initialised member restarts with its state: same listeners, database opened again.
* Stop (signal handled by the CLI, ``POST /core/control/shutdown``, or :meth:`shutdown`):
  new requests get 503, the database closes, listeners drain under ``drain_timeout``, then the
  nursery is cancelled. Cancelling the owner's scope also stops the member; the database is
  then closed in a shielded, bounded ``finally``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, final

import trio

from ._api._args import DaemonArgs
from ._api._cluster_routes import cluster_resources
from ._api._control import control_resources
from ._api._group import ListenerGroup, Running, Serve
from ._api._internal import fan_out, internal_resources
from ._api._listener import serve_tcp, serve_unix
from ._api._metrics import install_member_metrics, instrument_committer, observability_resources
from ._api._public import public_resources
from ._api._resources import Resources, Server, validate_servers
from ._api._router import ListenerContext, ListenerKind, Router, build_app
from ._api._state import ClusterMemberLocal, ControlRequest, State
from ._certs import (
    CertKeyPair,
    SSLContextHolder,
    ensure_server_cert,
    generate_cert_key_pair,
    load_cert_key_pair,
    validate_pair,
    write_cert_key_pair,
)
from ._cluster._recovery import import_recovery_tarball
from ._cluster._truststore import Truststore
from ._db import Database, DatabaseStatus, ExtensionRegistry
from ._errors import (
    BadRequestError,
    NotFoundError,
    ValidationError,
)
from ._heap import freeze_heap
from ._hooks import HookRunner, HookType
from ._join import initialise_member
from ._log import member_context
from ._membership import MemberCluster, RaftChannelProxy
from ._metrics import MetricsRegistry
from ._replication import CORE_ALPN_PROTOCOLS, RAFT_ALPN, DriverConfig, node_id_for
from ._replication._metrics import install_raft_metrics
from ._replication_state import ReplicationState, replication_state
from ._state import DaemonConfig, ServerConfig, StateDir

__all__ = ["Daemon", "DaemonArgs"]

logger = logging.getLogger("microtrio.daemon")


@final
class Daemon:
    """One member. Run with ``await nursery.start(daemon.run)``; stop with :meth:`shutdown`."""

    def __init__(
        self,
        state_dir: StateDir | str | os.PathLike[str],
        args: DaemonArgs,
        *,
        freeze_heap: bool = False,
    ) -> None:
        """``freeze_heap``: this process is the daemon; freeze its heap once ready and after
        each database open so that full garbage collections stay short (:mod:`._heap`)."""
        if not args.version:
            raise ValidationError("DaemonArgs.version is required")
        validate_servers(args.servers)
        self._dir = state_dir if isinstance(state_dir, StateDir) else StateDir(state_dir)
        self._args = args
        self._freeze_heap = freeze_heap
        self._extensions = ExtensionRegistry(args.api_extensions)
        self._hooks = HookRunner(args.hooks, timeout=args.hook_timeout)
        self._truststore = Truststore(self._dir.truststore_dir)
        self.state = State(
            state_dir=self._dir,
            version=args.version,
            extensions=self._extensions,
            hooks=self._hooks,
            servers=args.servers,
            control=self,
            truststore=self._truststore,
            wall_clock=args.wall_clock,
        )
        self._db: Database | None = None
        self._cluster: MemberCluster | None = None
        self._raft_route = RaftChannelProxy()
        self._reset_lock = trio.Lock()
        self._db_closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._listeners = ListenerGroup(drain_timeout=args.drain_timeout)
        self._stop = trio.Event()
        self._stopping = False
        self._initialising = False
        #: Completed in-process resets (removal or failed init); see :meth:`wait_reset`.
        self.reset_count = 0
        self._reset_changed = trio.Event()
        #: This member's metrics (``GET /core/1.0/metrics``); components add their own.
        self.metrics = MetricsRegistry()
        self._request_metrics = install_member_metrics(
            self.metrics, self.state, lambda: self.listener_addresses
        )
        install_raft_metrics(
            self.metrics, lambda: self._cluster.replication if self._cluster else None
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`shutdown` (or cancellation); ``started()`` once ready. Every
        task and worker thread of the member logs under its name (:mod:`._log`)."""
        with member_context(lambda: self.state.name, self._member_name_of):
            await self._run(task_status)

    def _member_name_of(self, node_id: int) -> str | None:
        """The member whose Raft node id this is (in the truststore), for log lines."""
        if node_id == node_id_for(self.state.name):
            return self.state.name
        for member in self._truststore.members():
            if node_id_for(member.name) == node_id:
                return member.name
        return None

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        lock = await trio.to_thread.run_sync(self._dir.acquire_lock)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._prepare()
                await self._start_listener("unix", lambda r: partial(self._serve_unix, r))
                nursery.start_soon(
                    partial(self._truststore.watch, interval=self._args.truststore_poll_interval)
                )
                if await trio.to_thread.run_sync(self._dir.is_initialised):
                    await self._start_member()
                else:
                    await self._start_pre_init()
                await self._hooks.run(HookType.ON_START, self.state)
                if self._freeze_heap:
                    freeze_heap("daemon ready")
                self.state._ready = True
                logger.info("%s: daemon ready (state dir %s)", self.state.name, self._dir.path)
                task_status.started()
                await self._stop.wait()
                await self._stop_sequence()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._args.drain_timeout):
                await self._close_database()
            self._stopping = True
            lock.release()  # an flock unlock and a close: safe even while cancelled

    async def shutdown(self) -> None:
        """Start the stop sequence and wait until the database is closed."""
        self._stop.set()
        self.state._shutting_down = True
        await self._db_closed.wait()

    async def _stop_sequence(self) -> None:
        self.state._shutting_down = True
        self._stopping = True
        logger.info("%s: stopping", self.state.name)
        with trio.move_on_after(2 * self._args.drain_timeout) as scope:
            await self._close_database(hand_over=True)
        if scope.cancelled_caught:
            logger.warning("%s: database did not close in time", self.state.name)
        await self._listeners.stop_all()

    async def _prepare(self) -> None:
        config = await trio.to_thread.run_sync(self._dir.load_daemon_config)
        if config is not None:
            self.state._name = config.name
            self.state._address = config.address
            self.state._config = config
        await trio.to_thread.run_sync(ensure_server_cert, self._dir, self.state.name)
        await trio.to_thread.run_sync(self._truststore.load)

    # -- database (built in ONE place) ---------------------------------------------------

    async def open_database(self, *, bootstrap: bool, joining: bool = False) -> Database:
        """The member's database, replicated through Raft (built here only): the founding
        member bootstraps Raft; a joiner first catches up with the leader; a restarted
        member waits for a leader before it opens (it needs a quorum to write)."""
        assert self._nursery is not None
        args = self._args
        cluster = await MemberCluster.open(
            state=self.state,
            state_dir=self._dir,
            truststore=self._truststore,
            hooks=self._hooks,
            bootstrap=bootstrap,
            interval=args.heartbeat,
            wall_clock=args.wall_clock,
            driver_config=DriverConfig(
                lease_read=args.lease_read,
                snapshot_chunk_size=args.limits.snapshot_chunk_size,
            ),
            faults=args.faults,
            max_frame_size=args.limits.max_raft_frame_size,
        )
        db = Database(
            self._dir.database_dir / "db.bin",
            extensions=self._extensions,
            schema_updates=args.schema_updates,
            patch_path=self._dir.patch_global_sql,
            committer_factory=instrument_committer(self.metrics, cluster.committer_factory),
            member=self.state.name,
        )
        self._db, self._cluster = db, cluster
        self._db_closed = trio.Event()
        await self._nursery.start(db.run)
        await self._nursery.start(cluster.run_replication, db)
        self._raft_route.attach(cluster.replication.transport)
        if joining:
            await cluster.catch_up()
        elif not bootstrap:
            await cluster.wait_for_leader()
        await db.open(bootstrap=bootstrap, member_name=self.state.name)
        self.state._database = db
        await cluster.start_components(db, nursery=self._nursery, extensions=self._extensions.names)
        if self._freeze_heap:
            freeze_heap("database open")
        return db

    async def _close_database(self, *, hand_over: bool = False) -> None:
        """Hand leadership over (graceful stop), stop the replication, then close the
        database: the driver must not apply entries to a closed database."""
        db, self._db = self._db, None
        cluster, self._cluster = self._cluster, None
        try:
            if cluster is not None and hand_over:
                await cluster.hand_over()
        finally:
            self._raft_route.attach(None)
            with trio.CancelScope(shield=True), trio.move_on_after(self._args.drain_timeout):
                if cluster is not None:
                    await cluster.aclose(hand_over=False)
                if db is not None:
                    await db.close()
            self.state._database = None
            self._db_closed.set()

    def database_status(self) -> DatabaseStatus:
        if self._stopping:
            return DatabaseStatus.OFFLINE
        if self._db is None:
            return DatabaseStatus.NOT_INITIALIZED
        return self._db.status

    # -- listeners -----------------------------------------------------------------------

    async def _start_listener(
        self,
        key: str,
        make_serve: Callable[[Running], Serve],
        holder: SSLContextHolder | None = None,
    ) -> str:
        assert self._nursery is not None
        return await self._listeners.start(self._nursery, key, make_serve, holder)

    def _context(
        self,
        kind: ListenerKind,
        resources: Sequence[Resources],
        running: Running | None = None,
        after_init: Sequence[Resources] = (),
    ) -> ListenerContext:
        host = None if running is None else (lambda: running.address)
        if kind in (ListenerKind.UNIX, ListenerKind.CORE):  # metrics + OpenAPI of this listener
            extra = observability_resources(self.metrics, lambda: router.routes())
            resources = [*resources, *extra]
        router = Router(resources, after_init)
        limits = self._args.limits
        return ListenerContext(self.state, kind, router, host, self._request_metrics, limits)

    def _app_resources(self, *, unix: bool, pre_init: bool | None = None) -> list[Resources]:
        """Resources of ``core_api`` servers (``serve_unix`` ones for the control socket);
        ``pre_init`` True/False selects servers with/without the pre-init flag."""
        found: list[Resources] = []
        for server in self._args.servers.values():
            if not server.core_api or (unix and not server.serve_unix):
                continue
            if pre_init is not None and server.pre_init != pre_init:
                continue
            found.extend(server.resources)
        return found

    async def _serve_unix(self, running: Running, **kwargs: Any) -> None:
        core = [*self._cluster_routes(), control_resources(), internal_resources()]
        core.append(public_resources())
        early = self._app_resources(unix=True, pre_init=True)
        late = self._app_resources(unix=True, pre_init=False)
        app = build_app(self._context(ListenerKind.UNIX, core + early, after_init=late))
        group = self._args.socket_group or os.environ.get("SOCKET_GROUP") or None
        await serve_unix(
            app,
            self._dir.control_socket,
            0o660,
            group,
            lifespan=False,
            graceful_timeout=self._args.drain_timeout,
            limits=self._args.limits,
            **kwargs,
        )

    async def _serve_tls(
        self,
        kind: ListenerKind,
        resources: Sequence[Resources],
        address: str,
        holder: SSLContextHolder,
        running: Running,
        **kwargs: Any,
    ) -> None:
        # The Host check compares with the bound address (known once bound: port 0 works).
        app = build_app(self._context(kind, resources, running))
        if kind is ListenerKind.CORE:
            kwargs["stream_handlers"] = {RAFT_ALPN: self._raft_route.serve_stream}
        await serve_tcp(
            app,
            address,
            holder,
            lifespan=False,
            graceful_timeout=self._args.drain_timeout,
            limits=self._args.limits,
            **kwargs,
        )

    def _cluster_routes(self) -> list[Resources]:
        return cluster_resources(lambda: self._cluster)

    async def start_core_listener(self, address: str) -> str:
        """The core listener (a joiner starts it with server.crt until it is admitted)."""
        crt, key = self._dir.cluster_crt, self._dir.cluster_key
        if not crt.exists():
            crt, key = self._dir.server_crt, self._dir.server_key
        pair = await trio.to_thread.run_sync(load_cert_key_pair, crt, key)
        holder = await trio.to_thread.run_sync(
            partial(SSLContextHolder, pair, alpn_protocols=CORE_ALPN_PROTOCOLS)
        )
        resources = [*self._cluster_routes(), internal_resources(), public_resources()]
        resources += self._app_resources(unix=False)
        return await self._start_listener(
            "core",
            lambda r: partial(self._serve_tls, ListenerKind.CORE, resources, address, holder, r),
            holder,
        )

    async def _start_pre_init(self) -> None:
        address = self._args.pre_init_listen_address
        if address:
            pair = await trio.to_thread.run_sync(
                load_cert_key_pair, self._dir.server_crt, self._dir.server_key
            )
            holder = await trio.to_thread.run_sync(SSLContextHolder, pair)
            resources = [public_resources()] + self._app_resources(unix=False, pre_init=True)
            await self._start_listener(
                "pre-init",
                lambda r: partial(
                    self._serve_tls, ListenerKind.PRE_INIT, resources, address, holder, r
                ),
                holder,
            )
        await self._start_extra_listeners(pre_init_only=True)

    async def _start_extra_listeners(self, *, pre_init_only: bool) -> None:
        config = self.state._config
        for name, server in self._args.servers.items():
            if server.core_api or (pre_init_only and not server.pre_init):
                continue
            address = server.address
            if config is not None and name in config.servers:
                address = config.servers[name].address
            if address and name not in self._listeners:
                await self._start_extra(name, server, address)

    async def _start_extra(self, name: str, server: Server, address: str) -> None:
        pair = await trio.to_thread.run_sync(self._extra_pair, name, server)
        holder = await trio.to_thread.run_sync(SSLContextHolder, pair)
        await self._start_listener(
            name,
            lambda r: partial(
                self._serve_tls, ListenerKind.EXTRA, server.resources, address, holder, r
            ),
            holder,
        )

    def _extra_pair(self, name: str, server: Server) -> CertKeyPair:
        crt, key, ca = self._dir.certificate_files(name)
        if server.dedicated_certificate or crt.exists():
            try:
                return load_cert_key_pair(crt, key, ca)
            except FileNotFoundError:
                pair = generate_cert_key_pair(name)
                write_cert_key_pair(crt, key, pair)
                return pair
        if self._dir.cluster_crt.exists():
            return load_cert_key_pair(self._dir.cluster_crt, self._dir.cluster_key)
        return load_cert_key_pair(self._dir.server_crt, self._dir.server_key)

    # -- start of an initialised member --------------------------------------------------

    async def _start_member(self) -> None:
        now = self._args.wall_clock()
        own = await trio.to_thread.run_sync(
            partial(
                import_recovery_tarball,
                self._dir,
                self._truststore,
                own_name=self.state.name,
                now=now,
            )
        )
        if own is not None:  # recovery may have changed this member's address
            config = await trio.to_thread.run_sync(self._dir.load_daemon_config)
            if config is not None:
                self.set_identity(config.name, config.address, config)
        self.state._address = await self.start_core_listener(self.state.address)
        await self.open_database(bootstrap=False)
        await self._start_extra_listeners(pre_init_only=False)

    # -- MemberControl: init, reset ------------------------------------------------------

    async def initialise(self, request: ControlRequest) -> None:
        """Bootstrap or join (``_join.py``). The work runs as a task of the daemon, not of the
        request, so a caller that disconnects cannot leave a half-initialised member."""
        assert self._nursery is not None
        if self._initialising:
            raise BadRequestError("Unable to initialize cluster: initialisation in progress")
        status = self.database_status()
        if status is not DatabaseStatus.NOT_INITIALIZED:
            raise BadRequestError(f"Unable to initialize cluster: {status}")
        self._initialising = True
        done = trio.Event()
        failure: list[Exception] = []

        async def bootstrap() -> None:
            try:
                await initialise_member(self, request)
            except Exception as exc:  # handed to the caller below
                failure.append(exc)
            finally:
                self._initialising = False
                done.set()

        self._nursery.start_soon(bootstrap)
        await done.wait()
        if failure:
            raise failure[0]

    async def reset(self, *, force: bool) -> None:
        """Answer first, then wipe the state and come back uninitialised (in-process)."""
        assert self._nursery is not None
        self._nursery.start_soon(self.reset_member)

    async def reset_member(self) -> None:
        """Wipe the state and come back uninitialised; a second reset waits for the first
        and then does nothing."""
        async with self._reset_lock:
            if self.state._config is None and self._db is None:
                return
            await self._reset_member()

    async def _reset_member(self) -> None:
        self.state._ready = False
        for key in [k for k in self._listeners.keys() if k != "unix"]:
            await self._listeners.stop(key)
        await self._close_database()
        await trio.to_thread.run_sync(self._dir.reset)
        self.state._name = State.default_name()
        self.state._address = ""
        self.state._config = None
        await trio.to_thread.run_sync(ensure_server_cert, self._dir, self.state.name)
        await trio.to_thread.run_sync(self._truststore.load)
        await self._start_pre_init()
        logger.info("%s: member reset to a fresh, uninitialised daemon", self.state.name)
        await self._hooks.run(HookType.ON_START, self.state)
        self.state._ready = True
        self.reset_count += 1
        self._reset_changed.set()
        self._reset_changed = trio.Event()

    async def wait_reset(self, count: int = 1) -> None:
        """Wait until at least ``count`` in-process resets have completed."""
        while self.reset_count < count:
            await self._reset_changed.wait()

    # -- InitHost (``_join.py``) ---------------------------------------------------------

    @property
    def state_dir(self) -> StateDir:
        return self._dir

    @property
    def truststore(self) -> Truststore:
        return self._truststore

    @property
    def hooks(self) -> HookRunner:
        return self._hooks

    @property
    def cluster(self) -> MemberCluster | None:
        """The member's cluster membership while its database is open."""
        return self._cluster

    @property
    def replication(self) -> ReplicationState | None:
        """This member's Raft replication, read-only (leader, term, role, applied index):
        a fresh :class:`~._replication_state.ReplicationState` at each read; None while the
        member has none (uninitialised, reset, stopped)."""
        cluster = self._cluster
        if cluster is None:
            return None
        return replication_state(cluster.replication, self._member_name_of)

    @property
    def extension_names(self) -> list[str]:
        return self._extensions.names

    @property
    def external_schema_version(self) -> int:
        return len(self._args.schema_updates)

    def set_identity(self, name: str, address: str, config: DaemonConfig | None) -> None:
        self.state._name, self.state._address, self.state._config = name, address, config

    def extra_server_configs(self) -> dict[str, ServerConfig]:
        servers = self._args.servers.items()
        return {name: ServerConfig(srv.address) for name, srv in servers if not srv.core_api}

    async def stop_listener(self, key: str) -> None:
        await self._listeners.stop(key)

    async def swap_core_certificate(self, pair: CertKeyPair) -> None:
        running = self._listeners.get("core")
        if running is not None and running.holder is not None:
            await trio.to_thread.run_sync(running.holder.swap, pair)

    async def start_extra_listeners(self) -> None:
        await self._start_extra_listeners(pre_init_only=False)

    # -- MemberControl: certificates, servers, truststore --------------------------------

    async def replace_certificate(self, name: str, cert: str, key: str, ca: str | None) -> None:
        pair = CertKeyPair(cert.encode(), key.encode(), ca.encode() if ca else None)
        await trio.to_thread.run_sync(validate_pair, pair)
        initialised = self.database_status() is not DatabaseStatus.NOT_INITIALIZED
        files: tuple[os.PathLike[str], os.PathLike[str], os.PathLike[str] | None]
        if name == "cluster":
            files = (self._dir.cluster_crt, self._dir.cluster_key, None)
            keys = ["core"] + [  # listeners without a certificate of their own
                n
                for n, s in self._args.servers.items()
                if not s.core_api and not s.dedicated_certificate
                and not self._dir.certificate_files(n)[0].exists()
            ]
        elif name == "server":
            if initialised:
                raise BadRequestError("The server certificate can only be replaced before init")
            files = (self._dir.server_crt, self._dir.server_key, None)
            keys = ["pre-init"]
        else:
            server = self._args.servers.get(name)
            if server is None or server.core_api:
                raise NotFoundError(f"No additional server named {name!r}")
            files = self._dir.certificate_files(name)
            keys = [name]
        crt, key_path, ca_path = files
        await trio.to_thread.run_sync(
            partial(write_cert_key_pair, crt, key_path, pair, ca_path=ca_path, crt_mode=0o664)
        )
        for key_name in keys:
            running = self._listeners.get(key_name)
            if running is not None and running.holder is not None:
                await trio.to_thread.run_sync(running.holder.swap, pair)

    async def update_servers(self, update: Mapping[str, str]) -> None:
        config = self.state._config
        if config is None:
            raise BadRequestError("This member is not initialised")
        new = DaemonConfig(
            config.name, config.address, {k: ServerConfig(v) for k, v in update.items()}
        )
        await trio.to_thread.run_sync(self._dir.save_daemon_config, new)
        self.state._config = new
        for name, server in self._args.servers.items():
            if server.core_api:
                continue
            old_address = config.servers.get(name, ServerConfig()).address
            new_address = update.get(name, "")
            running = self._listeners.get(name)
            if running is not None and (new_address != old_address or not new_address):
                await self._listeners.stop(name)
            if new_address and name not in self._listeners:
                await self._start_extra(name, server, new_address)

    async def add_trusted(self, member: ClusterMemberLocal, *, notify: bool = True) -> None:
        """Add ``member``; unless this is a notification, first push it to every other
        member (except itself and the new one), as microcluster does."""
        if notify:
            await fan_out(
                self.state,
                "add_trust",
                {self.state.name, member.name},
                member.name,
                member.address,
                member.certificate,
            )
        await trio.to_thread.run_sync(self._truststore.add, member)

    async def remove_trusted(self, name: str, *, notify: bool = True) -> None:
        if name == self.state.name:
            raise BadRequestError("A member cannot remove itself from its truststore")
        if notify:
            await fan_out(self.state, "remove_trust", {self.state.name, name}, name)
        await trio.to_thread.run_sync(self._truststore.remove, name)

    def notify_upgrade(self) -> None:
        if self._db is not None:
            self._db.notify_upgrade()

    @property
    def listener_addresses(self) -> dict[str, str]:
        """Bound address of every running listener, by key (``unix``, ``core``, ...)."""
        return self._listeners.addresses
