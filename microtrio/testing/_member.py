"""One in-process member of a test cluster (:class:`TestMember`).

A member is a :class:`microtrio.App` run by ``App.run`` inside its own cancel scope, a task of
the cluster's nursery. Killing it cancels that scope (its listeners and Raft tasks stop at
once; the daemon's shielded ``finally`` still closes the database file, so a kill is an abrupt
network stop, not a torn write: use real processes for ``kill -9``). Restarting runs ``App.run``
again on the same state directory, which reopens everything the member persisted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

import trio

from .._app import App
from .._client import Client
from .._daemon import Daemon, DaemonArgs
from .._db import Database
from .._errors import StateError
from .._replication import node_id_for

__all__ = ["TestMember"]

logger = logging.getLogger("microtrio.testing")


@final
class TestMember:
    """A member of a :class:`~microtrio.testing.TestCluster` as tests see it.

    ``name``, ``node_id`` (its Raft id), ``state_dir``, ``app`` (the :class:`microtrio.App`),
    ``address`` (the core listener's ``ip:port`` once initialised) and ``running``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, state_dir: Path, args: DaemonArgs) -> None:
        self.name = name
        self.node_id = node_id_for(name)
        self.state_dir = state_dir
        self.args = args
        self.app = App(state_dir, args=args)
        self.address = ""
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._stopped.set()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TestMember {self.name} {self.address or '-'} {state}>"

    # -- lifecycle (driven by the cluster) -----------------------------------------------

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the member until it is killed or stopped; ``started()`` once it is ready."""
        if self.running:
            raise StateError(f"{self.name} is already running")
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                await self.app.run(task_status=task_status)
        finally:
            self._scope = None
            self._stopped.set()
            logger.info("%s: test member stopped", self.name)

    async def kill(self) -> None:
        """Cancel the member's scope and wait until its task has ended."""
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()

    async def stop(self) -> None:
        """A graceful stop (the daemon's own shutdown sequence), then wait for the task."""
        daemon = self.app.daemon
        if daemon is not None:
            await daemon.shutdown()
        await self._stopped.wait()

    # -- what a test reads ---------------------------------------------------------------

    @property
    def daemon(self) -> Daemon:
        daemon = self.app.daemon
        if daemon is None:
            raise StateError(f"{self.name} is not running")
        return daemon

    @property
    def database(self) -> Database:
        """This member's database (``DatabaseNotOpenError`` unless it is online)."""
        return self.daemon.state.database

    @property
    def applied_index(self) -> int:
        """The last log index this member applied to its database."""
        return self.database.applied_index

    def leader_id(self) -> int:
        """The Raft leader this member believes in (0: none known or no open database)."""
        replication = self.daemon.replication
        return 0 if replication is None else replication.leader_id

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query on this member's local database (a stale read: no round trip)."""

        def run(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in conn.execute(sql, tuple(params))]

        result: list[tuple[Any, ...]] = await self.database.read(run, stale=True)
        return result

    # -- clients -------------------------------------------------------------------------

    def local_client(self) -> Client:
        """A client of the member's control socket (``async with member.local_client()``)."""
        return self.app.local_client()

    async def client(self) -> Client:
        """A mutual-TLS client of the member's core address, presenting its own trusted
        ``server.crt`` and pinning its ``cluster.crt`` (``async with await member.client()``)."""
        if not self.address:
            raise StateError(f"{self.name} has no address yet")
        return await self.app.remote_client(self.address)
