"""Test harness: N replicated members in one trio.run.

Each member has its own state directory, a real listener on 127.0.0.1 port 0 with mutual
TLS serving the Raft channel (ALPN ``RAFT_ALPN``) to its transport, the durable log store, the
driver and a Database whose committer is the RaftCommitter. A member is "killed" by
cancelling its cancel scope, and restarted on the same directories (a new port: the
others are told the new address).
"""

from __future__ import annotations

import hashlib
import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio
from quart_trio import QuartTrio

from microtrio._api._listener import serve_tcp
from microtrio._certs import (
    CertKeyPair,
    SSLContextHolder,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
)
from microtrio._db import Database, ExtensionRegistry
from microtrio._replication import (
    CORE_ALPN_PROTOCOLS,
    RAFT_ALPN,
    CommitterConfig,
    DriverConfig,
    Faults,
    RaftReplication,
    TransportConfig,
    node_id_for,
)

T = TypeVar("T")

FAST_TRANSPORT = TransportConfig(backoff_min=0.01, backoff_max=0.2, connect_timeout=5.0)
FAST_DRIVER = DriverConfig(tick_interval=0.05, election_tick=10)


@dataclass(frozen=True)
class Pki:
    cluster: CertKeyPair
    members: dict[str, CertKeyPair]

    @classmethod
    def create(cls, names: Sequence[str]) -> Pki:
        return cls(
            cluster=generate_cert_key_pair("microtrio-cluster"),
            members={name: generate_cert_key_pair(name) for name in names},
        )

    def trusted(self) -> set[bytes]:
        return {pair.der for pair in self.members.values()}

    def client_context(self, name: str) -> ssl.SSLContext:
        return client_ssl_context(self.members[name], self.cluster.cert)


class Member:
    """One member; ``start`` / ``kill`` / ``start`` again on the same state directory."""

    def __init__(
        self,
        name: str,
        root: Path,
        pki: Pki,
        *,
        driver_config: DriverConfig = FAST_DRIVER,
        committer_config: CommitterConfig | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.name = name
        self.id = node_id_for(name)
        self.dir = root / name
        self.pki = pki
        self.driver_config = driver_config
        self.committer_config = committer_config
        self.faults = faults
        self.address = ""
        self.scope = trio.CancelScope()
        self.replication: RaftReplication | None = None
        self.database: Database | None = None
        self.starts = 0
        self.killed = False

    @property
    def db(self) -> Database:
        assert self.database is not None, f"{self.name} is not running"
        return self.database

    @property
    def repl(self) -> RaftReplication:
        assert self.replication is not None, f"{self.name} is not running"
        return self.replication

    @property
    def db_path(self) -> Path:
        return self.dir / "database" / "db.bin"

    @property
    def raft_dir(self) -> Path:
        return self.dir / "database" / "raft"

    @property
    def running(self) -> bool:
        return self.replication is not None and not self.killed

    @property
    def stopped(self) -> bool:
        """True once a kill has fully unwound (the state directory is free again)."""
        return self.replication is None

    async def listen(self, nursery: trio.Nursery, bootstrap: Sequence[int] | None) -> None:
        """Phase 1: the listener with the Raft channel (the address becomes known)."""
        self.scope = trio.CancelScope()
        self.killed = False
        self.starts += 1
        self.inner: trio.Nursery | None = None
        self.inner = await nursery.start(self._own)
        replication = RaftReplication(
            self.name,
            "",
            directory=self.raft_dir,
            ssl_context=self.pki.client_context(self.name),
            is_trusted=self.pki.trusted().__contains__,
            bootstrap=bootstrap,
            driver_config=self.driver_config,
            committer_config=self.committer_config,
            transport_config=TransportConfig(
                **{
                    **{f: getattr(FAST_TRANSPORT, f) for f in FAST_TRANSPORT.__dataclass_fields__},
                    "server_hostname": pinned_server_name(self.pki.cluster.cert),
                }
            ),
            faults=self.faults,
            rng=random.Random(f"{self.name}/{self.starts}"),
        )
        app = QuartTrio(self.name)
        holder = SSLContextHolder(self.pki.cluster, alpn_protocols=CORE_ALPN_PROTOCOLS)
        handlers = {RAFT_ALPN: replication.transport.serve_stream}
        assert self.inner is not None
        self.address = await self.inner.start(
            lambda task_status: serve_tcp(
                app, "127.0.0.1:0", holder, stream_handlers=handlers, task_status=task_status
            )
        )
        replication.address = self.address
        self.replication = replication

    async def _own(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(nursery)
                    await trio.sleep_forever()
        finally:
            self.replication = None
            self.database = None

    async def start_database(self, addresses: dict[int, str]) -> None:
        """Phase 2: database + replication (peers' addresses known)."""
        replication = self.repl
        for node_id, address in addresses.items():
            replication.set_address(node_id, address)
        database = Database(
            self.db_path,
            extensions=ExtensionRegistry(),
            committer_factory=replication.committer_factory,
            member=self.name,
        )
        assert self.inner is not None
        await self.inner.start(database.run)
        await self.inner.start(replication.run)
        self.database = database

    async def open_database(self) -> None:
        await self.db.open(bootstrap=True)

    def kill(self) -> None:
        """Crash-stop: cancel everything the member runs (nothing is flushed specially)."""
        self.killed = True
        self.scope.cancel()

    async def wait_stopped(self) -> None:
        while not self.stopped:  # noqa: ASYNC110 - the kill's cancellation is unwinding
            await trio.sleep(0.01)


class Cluster:
    def __init__(self, members: list[Member], nursery: trio.Nursery) -> None:
        self.members = members
        self.nursery = nursery

    def __getitem__(self, index: int) -> Member:
        return self.members[index]

    def by_id(self, node_id: int) -> Member:
        return next(m for m in self.members if m.id == node_id)

    def running(self) -> list[Member]:
        return [m for m in self.members if m.running]

    def addresses(self) -> dict[int, str]:
        return {m.id: m.address for m in self.members if m.address}

    async def start(self, members: Sequence[Member], *, bootstrap: Sequence[int] | None) -> None:
        for member in members:
            await member.listen(self.nursery, bootstrap)
        addresses = self.addresses()
        for member in members:
            await member.start_database(addresses)
        for other in self.running():
            for member in members:
                if other is not member:
                    other.repl.set_address(member.id, member.address)

    async def restart(self, member: Member) -> None:
        """Start a killed member again on its state directory and open its database."""
        await member.wait_stopped()
        await self.start([member], bootstrap=[m.id for m in self.members])
        await member.open_database()

    async def leader(self) -> Member:
        """The member that all running members agree leads (polls until they do)."""
        while True:
            ids = {m.repl.leader().id for m in self.running()}
            if len(ids) == 1 and 0 not in ids:
                leader = self.by_id(ids.pop())
                if leader.running and leader.repl.driver.is_leader:
                    return leader
            await trio.sleep(0.02)

    async def wait_applied(self, index: int, members: Sequence[Member] | None = None) -> None:
        for member in members if members is not None else self.running():
            await member.repl.driver.wait_applied(index)


@asynccontextmanager
async def open_cluster(
    root: Path, size: int, *, pki: Pki | None = None, **member_kwargs: Any
) -> AsyncIterator[Cluster]:
    names = [f"member{k}" for k in range(1, size + 1)]
    pki = pki if pki is not None else Pki.create(names)
    async with trio.open_nursery() as nursery:
        members = [Member(name, root, pki, **member_kwargs) for name in names]
        cluster = Cluster(members, nursery)
        await cluster.start(members, bootstrap=[m.id for m in members])
        async with trio.open_nursery() as opening:
            for member in members:
                opening.start_soon(member.open_database)
        yield cluster
        nursery.cancel_scope.cancel()


def table_checksums(path: Path) -> dict[str, str]:
    """sha256 of the schema and of every table's rows (in rowid / primary-key order)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out: dict[str, str] = {}
        schema = list(conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name"))
        out["<schema>"] = hashlib.sha256(repr(schema).encode()).hexdigest()
        for type_, name, _sql in schema:
            if type_ != "table" or name == "microtrio_applied":
                continue
            rows = list(conn.execute(f'SELECT * FROM "{name}" ORDER BY 1'))
            out[name] = hashlib.sha256(repr(rows).encode()).hexdigest()
        return out
    finally:
        conn.close()


async def checksums(member: Member) -> dict[str, str]:
    return await trio.to_thread.run_sync(table_checksums, member.db_path)


def sql(statement: str, *args: Any) -> Callable[[apsw.Connection], Any]:
    def run(conn: apsw.Connection) -> Any:
        return conn.execute(statement, args).fetchall()

    return run


async def write(member: Member, fn: Callable[[apsw.Connection], T]) -> T:
    """A write on ``member`` after a read barrier: the Database executes a batch on the
    local applied state, so without the barrier a write right after another member's
    acknowledged write may run on a state that does not include it yet."""
    await member.db.read(lambda conn: None)
    return await member.db.transaction(fn)
