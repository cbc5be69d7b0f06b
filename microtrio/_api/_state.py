"""``State``: what endpoint handlers and hooks see of their member.

The daemon owns one ``State`` per member and updates it as the member goes through its
lifecycle (name and address at init, database when open, ready, shutting down). Handlers and
hooks only read it. The daemon's own operations (init, shutdown, reset) are reached through
the :class:`MemberControl` protocol so that this layer never imports the daemon.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, final

from .._cluster._truststore import TrustedMember
from .._db._status import DatabaseStatus
from .._errors import DatabaseNotOpenError, UnavailableError

if TYPE_CHECKING:
    from .._client import Client
    from .._cluster._truststore import Truststore
    from .._db import Database
    from .._db._extensions import ExtensionRegistry
    from .._hooks import HookRunner, Hooks
    from .._state import DaemonConfig, StateDir
    from ._resources import Server

#: A member's identity as microcluster names it: ``name``, ``address``, ``certificate`` (PEM).
ClusterMemberLocal = TrustedMember

__all__ = ["ClusterMemberLocal", "ControlRequest", "MemberControl", "RoleStatus", "State"]


@final
@dataclass(frozen=True, slots=True)
class RoleStatus:
    """A member's role before and after a heartbeat round."""

    old: str
    new: str


@final
@dataclass(frozen=True, slots=True)
class ControlRequest:
    """The body of ``POST /core/control`` (microcluster's ``Control``)."""

    name: str
    address: str
    bootstrap: bool = False
    join_token: str = ""
    config: Mapping[str, str] = field(default_factory=dict)


class MemberControl(Protocol):
    """The daemon operations the REST API triggers."""

    async def initialise(self, request: ControlRequest) -> None: ...

    async def shutdown(self) -> None: ...

    async def reset(self, *, force: bool) -> None: ...

    def database_status(self) -> DatabaseStatus: ...

    async def replace_certificate(self, name: str, cert: str, key: str, ca: str | None) -> None: ...

    async def update_servers(self, update: Mapping[str, str]) -> None: ...

    async def add_trusted(self, member: ClusterMemberLocal, *, notify: bool = True) -> None: ...

    async def remove_trusted(self, name: str, *, notify: bool = True) -> None: ...

    def notify_upgrade(self) -> None: ...


@final
class State:
    """The member as handlers and hooks see it (microcluster's ``state.State``)."""

    def __init__(
        self,
        *,
        state_dir: StateDir,
        version: str,
        extensions: ExtensionRegistry,
        hooks: HookRunner,
        servers: Mapping[str, Server],
        control: MemberControl,
        truststore: Truststore,
        wall_clock: Callable[[], datetime.datetime],
    ) -> None:
        self._state_dir = state_dir
        self._version = version
        self._extensions = extensions
        self._hooks = hooks
        self._servers = dict(servers)
        self._control = control
        self._truststore = truststore
        self._wall_clock = wall_clock
        self._name = self.default_name()
        self._address = ""
        self._database: Database | None = None
        self._ready = False
        self._shutting_down = False
        self._config: DaemonConfig | None = None
        #: Application data: handlers and hooks may keep their own objects here.
        self.data: dict[str, Any] = {}

    @staticmethod
    def default_name() -> str:
        """The member name before init: the host name (as microcluster)."""
        from .._cluster._names import validate_name
        from .._errors import ValidationError

        name = socket.gethostname().split(".")[0]
        try:
            return validate_name(name)
        except ValidationError:
            return "member"

    # -- read-only view ------------------------------------------------------------------

    def now(self) -> datetime.datetime:
        """UTC wall-clock time from the injected clock (token expiry, certificate validity)."""
        return self._wall_clock()

    @property
    def daemon_config(self) -> DaemonConfig | None:
        """The contents of ``daemon.yaml`` (None before init)."""
        return self._config

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        """This member's ``ip:port`` ("" before init)."""
        return self._address

    @property
    def url(self) -> str:
        return f"https://{self._address}" if self._address else ""

    @property
    def version(self) -> str:
        return self._version

    @property
    def state_dir(self) -> StateDir:
        return self._state_dir

    @property
    def truststore(self) -> Truststore:
        return self._truststore

    @property
    def hooks(self) -> Hooks:
        return self._hooks.hooks

    @property
    def hook_runner(self) -> HookRunner:
        return self._hooks

    @property
    def extensions(self) -> list[str]:
        return self._extensions.names

    @property
    def extension_registry(self) -> ExtensionRegistry:
        return self._extensions

    def has_extension(self, name: str) -> bool:
        return self._extensions.has(name)

    @property
    def servers(self) -> Mapping[str, Server]:
        return dict(self._servers)

    @property
    def extension_servers(self) -> Sequence[str]:
        """Names of the application's servers that are not mounted on the core API."""
        return [name for name, srv in self._servers.items() if not srv.core_api]

    @property
    def ready(self) -> bool:
        """True once startup finished (OnStart done) and until shutdown starts."""
        return self._ready and not self._shutting_down

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def database_status(self) -> DatabaseStatus:
        return self._control.database_status()

    @property
    def database_open(self) -> bool:
        return self._control.database_status() is DatabaseStatus.ONLINE

    @property
    def database(self) -> Database:
        """The member's database; raises ``DatabaseNotOpenError`` unless it is online."""
        status = self._control.database_status()
        if self._database is None or status is not DatabaseStatus.ONLINE:
            raise DatabaseNotOpenError(str(status))
        return self._database

    @property
    def control(self) -> MemberControl:
        return self._control

    # -- clients -------------------------------------------------------------------------

    def local_client(self) -> Client:
        """A client on this member's control socket."""
        from .._client import Client

        return Client.unix(self._state_dir.control_socket)

    async def cluster_clients(self) -> list[Client]:
        """Clients to every other member in ``core_cluster_members`` (microcluster's
        ``Cluster``). Close each one (``async with``) when done; use ``client.notifier()``
        on it for notification requests (peers then do not fan out again)."""
        from .._cluster._members import list_members

        rows = await self.database.read(list_members)
        clients = []
        for row in rows:
            if row.name == self._name:
                continue
            clients.append(await self.remote_client(row.address))
        return clients

    async def remote_client(self, address: str) -> Client:
        """A mutual-TLS client to another member: presents ``server.crt``, pins ``cluster.crt``
        (and, while a cluster certificate rotation is under way, the other certificate)."""
        import trio

        from .._certs import cluster_pin_bundle, load_cert_key_pair
        from .._client import Client

        if not self._address:
            raise UnavailableError("This member is not initialised")

        def build() -> Client:
            pair = load_cert_key_pair(self._state_dir.server_crt, self._state_dir.server_key)
            pinned = cluster_pin_bundle(self._state_dir)
            return Client.tls(address, cert=pair, pinned=pinned)

        return await trio.to_thread.run_sync(build)
