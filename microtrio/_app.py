"""``App``: the public handle of one member (microcluster's ``MicroCluster``).

An ``App`` is bound to a state directory. It runs the member daemon in-process
(:meth:`App.start`, :meth:`App.run`, ``async with``) and talks to a running daemon over its
control socket (every other method), whether that daemon runs in this process or not::

    app = microtrio.App(state_dir="/var/lib/myapp", args=microtrio.DaemonArgs(version="1.0"))
    async with app:                      # starts the daemon, stops it on exit
        await app.ready()
        await app.new_cluster("member1", "127.0.0.1:9001")

    # or inside a host application's nursery:
    await nursery.start(app.run, args)
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Mapping
from types import TracebackType
from typing import Any, final

import trio

from ._client import Client
from ._daemon import Daemon, DaemonArgs
from ._errors import StateError, TimeoutError_
from ._state import StateDir

__all__ = ["App"]

_STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGPWR")
    if hasattr(signal, name)
)


def _nanoseconds(expire_after: datetime.timedelta | float) -> int:
    if isinstance(expire_after, datetime.timedelta):
        return int(expire_after / datetime.timedelta(microseconds=1)) * 1000
    return int(expire_after * 1_000_000_000)


@final
class App:
    """One member's handle: run its daemon, or talk to it over ``control.socket``."""

    def __init__(
        self, state_dir: str | os.PathLike[str], *, args: DaemonArgs | None = None
    ) -> None:
        if not os.fspath(state_dir):
            raise StateError("A state directory is required")
        self._dir = StateDir(state_dir)
        self._args = args
        self._daemon: Daemon | None = None
        self._cm_nursery: trio.Nursery | None = None
        self._cm_manager: Any = None

    @property
    def state_dir(self) -> StateDir:
        return self._dir

    @property
    def daemon(self) -> Daemon | None:
        """The daemon running in this process (None if it runs elsewhere or not at all)."""
        return self._daemon

    # -- running the daemon --------------------------------------------------------------

    async def run(
        self,
        args: DaemonArgs | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        freeze_heap: bool = False,
    ) -> None:
        """Run the daemon until it is shut down; ``started()`` once it is ready.

        For ``await nursery.start(app.run, args)``; cancelling the nursery stops the member.
        ``freeze_heap=True`` when the process exists to run this member: the objects alive
        once it is ready (and after each database open) are frozen out of the garbage
        collector's full collections, which then stay short (docs/operations.md).
        """
        daemon_args = args if args is not None else self._args
        if daemon_args is None:
            raise StateError("DaemonArgs are required to run the daemon")
        await trio.to_thread.run_sync(self._dir.create)
        daemon = Daemon(self._dir, daemon_args, freeze_heap=freeze_heap)
        self._daemon = daemon
        try:
            await daemon.run(task_status=task_status)
        finally:
            self._daemon = None

    async def start(
        self,
        args: DaemonArgs | None = None,
        *,
        handle_signals: bool = True,
        freeze_heap: bool = True,
    ) -> None:
        """Run the daemon in the foreground until stopped (SIGTERM/SIGINT/SIGQUIT/SIGPWR stop
        it, SIGHUP is ignored, when ``handle_signals``), like microcluster's ``Start``.
        The process is the daemon's: its heap is frozen once settled (``freeze_heap``, see
        :meth:`run`)."""
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(self._watch_signals)
            await self.run(args, freeze_heap=freeze_heap)
            nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            async for _ in signals:
                daemon = self._daemon
                if daemon is None:
                    return
                await daemon.shutdown()
                return

    async def shutdown(self) -> None:
        """Stop the daemon: in-process directly, else ``POST /core/control/shutdown``."""
        if self._daemon is not None:
            await self._daemon.shutdown()
            return
        async with self.local_client() as client:
            await client.shutdown()

    async def __aenter__(self) -> App:
        nursery_manager = trio.open_nursery()
        nursery = await nursery_manager.__aenter__()
        try:
            await nursery.start(self.run)
        except BaseException as exc:
            await nursery_manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._cm_manager, self._cm_nursery = nursery_manager, nursery
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        manager, nursery = self._cm_manager, self._cm_nursery
        self._cm_manager = self._cm_nursery = None
        assert manager is not None and nursery is not None
        if exc is None:
            if self._daemon is not None:
                await self._daemon.shutdown()
            result: bool | None = await manager.__aexit__(None, None, None)
            return result
        # The body failed: stop the member and let the body's own exception propagate.
        nursery.cancel_scope.cancel()
        await manager.__aexit__(None, None, None)
        return None

    # -- clients -------------------------------------------------------------------------

    def local_client(self) -> Client:
        """A client of this member's ``control.socket``."""
        return Client.unix(self._dir.control_socket)

    async def remote_client(self, address: str, *, pinned: bytes | str | None = None) -> Client:
        """A mutual-TLS client to ``address`` presenting ``server.crt`` and pinning
        ``cluster.crt`` (or ``pinned``)."""
        from ._certs import load_cert_key_pair

        def build() -> Client:
            pair = load_cert_key_pair(self._dir.server_crt, self._dir.server_key)
            pin = pinned if pinned is not None else self._dir.cluster_crt.read_bytes()
            return Client.tls(address, cert=pair, pinned=pin)

        try:
            return await trio.to_thread.run_sync(build)
        except FileNotFoundError as exc:
            raise StateError(f"Missing certificate for a remote client: {exc}") from exc

    # -- operations over the control socket ----------------------------------------------

    async def ready(self, *, timeout: float | None = None, poll_interval: float = 0.5) -> None:  # noqa: ASYNC109
        """Wait until the daemon answers ``GET /core/1.0/ready`` (polls every 0.5 s)."""
        limit = float("inf") if timeout is None or timeout <= 0 else timeout
        try:
            with trio.fail_after(limit):
                async with self.local_client() as client:
                    await client.wait_ready(poll_interval=poll_interval)
        except trio.TooSlowError as exc:
            raise TimeoutError_(f"Daemon not ready after {timeout:g}s") from exc

    async def status(self) -> dict[str, Any]:
        """``GET /core/1.0``: ``{name, address, version, ready, extensions}``."""
        async with self.local_client() as client:
            return await client.status()

    async def new_cluster(
        self, name: str, address: str, config: Mapping[str, str] | None = None
    ) -> None:
        """Bootstrap a new cluster with this member as its first member."""
        async with self.local_client() as client:
            await client.bootstrap(name, address, config)

    async def join_cluster(
        self, name: str, address: str, token: str, config: Mapping[str, str] | None = None
    ) -> None:
        """Join an existing cluster with a join token."""
        async with self.local_client() as client:
            await client.join(name, address, token, config)

    async def new_join_token(self, name: str, expire_after: datetime.timedelta | float = 0) -> str:
        """Issue a join token for member ``name`` (``expire_after`` seconds; 0: never)."""
        async with self.local_client() as client:
            return await client.add_token(name, expire_after_ns=_nanoseconds(expire_after))

    async def list_join_tokens(self) -> list[dict[str, Any]]:
        async with self.local_client() as client:
            return await client.list_tokens()

    async def revoke_join_token(self, name: str) -> None:
        async with self.local_client() as client:
            await client.revoke_token(name)

    async def cluster_members(self) -> list[dict[str, Any]]:
        async with self.local_client() as client:
            return await client.cluster_members()

    async def sql(self, query: str) -> str | dict[str, Any]:
        """``.dump`` / ``.schema`` return the dump text; anything else the ``SQLBatch``."""
        async with self.local_client() as client:
            if query in (".dump", ".schema"):
                return await client.sql_dump(schema_only=query == ".schema")
            return await client.sql_query(query)
