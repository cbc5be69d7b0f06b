"""Cluster members as real processes, for the fault-injection campaign.

Theory of operation
-------------------

Each member is a separate Python process (``python -m microtrio.testing._processes``) in its
own process group and session, so that ``kill -9``, ``SIGSTOP`` and ``SIGCONT`` hit exactly
that member (and nothing the runner did not start). A member runs the same pieces as the
daemon: the durable Raft store, the transport (a websocket on its mutual-TLS listener), the
driver, the Raft committer and the replicated :class:`~microtrio._db.Database`, plus:

* the example application's key-value routes (``PUT``/``GET /1.0/kv/{key}``, linearizable
  reads unless ``?stale=1``) and the SQL passthrough (``POST /core/internal/sql``, a whole
  request in one transaction), in the daemon's wire shapes;
* ``/campaign/...`` control routes for the nemesis: ``status`` (role, leader, applied index),
  ``transfer``, ``remove``, ``add`` (a removed member joins again) and ``peers`` (where to dial
  the others).

The cluster is formed as ``bench/microtrio_cluster.sh`` forms it: every founding member
starts with the same voters (the daemon cannot join members by token yet). A member listens
on ``127.0.0.1:0`` the first time and prints ``{"address": ...}`` on stdout; the runner
starts it again on that same address after a kill. Peers are dialled at addresses given on
the command line: the campaign gives each member the address of its :mod:`._proxy` link to
each peer, which is how partitions are made without root.

``--plugin FILE`` replaces the kv handlers with a file's ``kv_put``/``kv_get`` (the test
suite's deliberately broken variants live in tests/jepsen_campaign/, nowhere else).

:class:`ProcessCluster` is the runner's side: spawn, kill, stop, pause, resume, restart by
PID, each member logging to ``<root>/<name>.log``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, final

import trio

from .._certs import (
    CertKeyPair,
    SSLContextHolder,
    client_ssl_context,
    generate_cert_key_pair,
    load_cert_key_pair,
    pinned_server_name,
    write_cert_key_pair,
)
from .._errors import (
    MicrotrioError,
    NotFoundError,
    OutcomeUnknownError,
    TimeoutError_,
    UnavailableError,
    ValidationError,
)

__all__ = ["CampaignPki", "MemberProcess", "ProcessCluster", "SCHEMA"]

logger = logging.getLogger("microtrio.testing.campaign")

SCHEMA: Final = (
    "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
    "CREATE TABLE bank (account TEXT PRIMARY KEY NOT NULL, balance INTEGER NOT NULL)",
    "CREATE TABLE append (k TEXT NOT NULL, v INTEGER NOT NULL)",
)
CLIENT: Final = "client"
_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 10.0


# --- PKI ------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class CampaignPki:
    """``cluster`` (every listener's certificate), one pair per member, and ``client``."""

    directory: Path

    @classmethod
    def create(cls, directory: Path, names: Sequence[str]) -> CampaignPki:
        """Write the pairs (blocking; missing ones only)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("cluster", CLIENT, *names):
            crt, key = directory / f"{name}.crt", directory / f"{name}.key"
            if not crt.exists():
                cn = "microtrio-cluster" if name == "cluster" else name
                write_cert_key_pair(crt, key, generate_cert_key_pair(cn))
        return cls(directory)

    def pair(self, name: str) -> CertKeyPair:
        return load_cert_key_pair(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    def trusted(self) -> set[bytes]:
        return {self.pair(p.stem).der for p in self.directory.glob("*.crt") if p.stem != "cluster"}

    def client_context(self, name: str = CLIENT) -> Any:
        """An SSL context presenting ``name``'s certificate, pinning the cluster's."""
        context = client_ssl_context(self.pair(name), self.pair("cluster").cert)
        context.check_hostname = False  # the pinned certificate is the only trust anchor
        return context


# --- the member program ---------------------------------------------------------------------


class _Plugin:
    """The kv handlers: the application's own, or a plugin file's replacements."""

    def __init__(self, database: Any, nursery: trio.Nursery, path: Path | None) -> None:
        self.database = database
        self.nursery = nursery
        self.put: Callable[[Any, str, bytes], Awaitable[None]] = _kv_put
        self.get: Callable[[Any, str, bool], Awaitable[bytes | None]] = _kv_get
        if path is not None:
            spec = importlib.util.spec_from_file_location("microtrio_campaign_plugin", path)
            if spec is None or spec.loader is None:
                raise ValidationError(f"cannot load plugin {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.put = getattr(module, "kv_put", self.put)
            self.get = getattr(module, "kv_get", self.get)


async def _kv_put(ctx: _Plugin, key: str, value: bytes) -> None:
    def put(conn: Any) -> None:
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    await ctx.database.transaction(put)


async def _kv_get(ctx: _Plugin, key: str, stale: bool) -> bytes | None:
    def get(conn: Any) -> bytes | None:
        for (value,) in conn.execute("SELECT value FROM kv WHERE key = ?", (key,)):
            return value.encode() if isinstance(value, str) else bytes(value)
        return None

    result: bytes | None = await ctx.database.read(get, stale=stale)
    return result


def _build_app(name: str, replication: Any, trusted: set[bytes], holder: dict[str, Any]) -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    from .._replication import add_raft_route, node_id_for
    from .._replication._frames import client_certificates
    from ..raft import Role

    app = QuartTrio(name)
    add_raft_route(app, replication.transport)

    def reply(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    def guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Response]]:
        async def wrapper(**kwargs: Any) -> Response:
            if not trusted.intersection(client_certificates(request.scope)):
                return reply({"type": "error", "error": "not authorized", "error_code": 403}, 403)
            if "plugin" not in holder:
                return reply({"type": "error", "error": "starting", "error_code": 503}, 503)
            try:
                response: Response = await fn(**kwargs)
                return response
            except MicrotrioError as exc:
                body = {"type": "error", "error": str(exc), "error_code": exc.status,
                        "error_class": type(exc).__name__}  # fmt: skip
                return reply(body, exc.status)

        wrapper.__name__ = fn.__name__
        return wrapper

    def sync(metadata: Any = None) -> Response:
        return reply(
            {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}
        )

    async def kv(key: str) -> Response:
        plugin: _Plugin = holder["plugin"]
        if request.method == "PUT":
            body = await request.get_data(as_text=False)
            await plugin.put(plugin, key, body.encode() if isinstance(body, str) else body)
            return sync({})
        value = await plugin.get(plugin, key, request.args.get("stale", "") in ("1", "true"))
        if value is None:
            raise NotFoundError(f"No key {key!r}")
        return Response(value, status=200, content_type="application/octet-stream")

    async def sql() -> Response:
        query = str((await request.get_json(force=True) or {}).get("query", ""))
        results = await holder["plugin"].database.execute_sql(query)
        return sync({"Results": [r.to_json() for r in results]})

    async def status() -> Response:
        driver = replication.driver
        return sync({"id": driver.id, "leader": driver.leader_id, "is_leader": driver.is_leader,
                     "applied": driver.applied_index})  # fmt: skip

    async def control(action: str) -> Response:
        body = await request.get_json(force=True) or {}
        if action == "peers":
            for peer, address in dict(body["peers"]).items():
                replication.set_address(node_id_for(str(peer)), str(address))
        elif action == "transfer":
            await replication.transfer_leadership(node_id_for(str(body["to"])))
        elif action == "remove":
            await replication.remove_member(node_id_for(str(body["name"])))
        elif action == "add":
            node = node_id_for(str(body["name"]))
            await replication.add_member(node, str(body["address"]), Role.STANDBY)
            await replication.promote(node)
        else:
            raise NotFoundError(f"no action {action!r}")
        return sync({})

    app.add_url_rule("/1.0/kv/<key>", "kv", guarded(kv), methods=["GET", "PUT"])
    app.add_url_rule("/core/internal/sql", "sql", guarded(sql), methods=["POST"])
    app.add_url_rule("/campaign/status", "status", guarded(status), methods=["GET"])
    app.add_url_rule("/campaign/<action>", "control", guarded(control), methods=["POST"])
    return app


async def member_main(args: argparse.Namespace) -> None:
    """The member program (see the module docstring)."""
    from .._db import Database, ExtensionRegistry, SchemaUpdate
    from .._replication import RaftReplication, TransportConfig, node_id_for

    pki = CampaignPki(Path(args.pki))
    cluster = pki.pair("cluster")
    trusted = pki.trusted()
    state = Path(args.state)
    peers = dict(p.split("=", 1) for p in args.peer)
    replication = RaftReplication(
        args.name,
        "",
        directory=state / "raft",
        ssl_context=client_ssl_context(pki.pair(args.name), cluster.cert),
        is_trusted=trusted.__contains__,
        bootstrap=[node_id_for(n) for n in args.founders.split(",")],
        transport_config=TransportConfig(server_hostname=pinned_server_name(cluster.cert)),
    )
    for peer, address in peers.items():
        replication.set_address(node_id_for(peer), address)
    holder: dict[str, Any] = {}
    app = _build_app(args.name, replication, trusted, holder)
    async with trio.open_nursery() as nursery:
        serve = partial(_serve, app, args.listen, SSLContextHolder(cluster))
        bound = await nursery.start(serve)
        replication.address = bound
        sys.stdout.write(json.dumps({"address": bound}) + "\n")
        sys.stdout.flush()
        database = Database(
            state / "db.bin",
            extensions=ExtensionRegistry(),
            schema_updates=[SchemaUpdate(s) for s in SCHEMA],
            committer_factory=replication.committer_factory,
            member=args.name,
        )
        await nursery.start(database.run)
        await nursery.start(replication.run)
        await _open(database, args.name)
        holder["plugin"] = _Plugin(database, nursery, Path(args.plugin) if args.plugin else None)
        logger.warning("%s: serving on %s", args.name, bound)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logger.warning("%s: stopping", args.name)
                with trio.move_on_after(5):
                    await replication.hand_over()
                nursery.cancel_scope.cancel()
                break


async def _open(database: Any, name: str) -> None:
    """Open the database, waiting for the other founders however long they take to start
    (each attempt gives up after the committer's leader wait; the schema step is idempotent)."""
    while True:
        try:
            await database.open(bootstrap=True)
            return
        except (UnavailableError, OutcomeUnknownError, TimeoutError_) as exc:
            logger.warning("%s: database not open yet: %s (retrying)", name, exc)


async def _serve(
    app: Any, address: str, holder: SSLContextHolder, *, task_status: trio.TaskStatus[str]
) -> None:
    from .._api._listener import serve_tcp

    await serve_tcp(app, address, holder, task_status=task_status)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one member of a fault-injection campaign")
    p.add_argument("--name", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--pki", required=True)
    p.add_argument("--founders", required=True, help="name1,name2,...")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--peer", action="append", default=[], help="name=ip:port (repeatable)")
    p.add_argument("--plugin", help="a Python file with replacement kv_put / kv_get")
    return p.parse_args(argv)


# --- the runner's side ----------------------------------------------------------------------


@final
class MemberProcess:
    """One member: its process (when running), address and log file."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.state_dir = root / name
        self.log_path = root / f"{name}.log"
        self.address = "127.0.0.1:0"  # fixed after the first start
        self.process: trio.Process | None = None
        self.paused = False
        self.signalled = False  # the runner killed or stopped it: an exit is expected

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


async def _wait_stopped(m: MemberProcess, stopped: bool = True) -> None:
    """Until the kernel shows the process as stopped (or not) (Linux; at most a second)."""
    stat = Path(f"/proc/{m.pid}/stat")
    with trio.move_on_after(1.0):
        while m.running:
            try:
                text = await trio.to_thread.run_sync(stat.read_text)
            except OSError:
                return
            if (text.rsplit(")", 1)[1].split()[0] in ("T", "t")) is stopped:
                return
            await trio.sleep(0.01)


@final
class ProcessCluster:
    """Spawns and signals the members; every child is in its own process group."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        pki: CampaignPki,
        *,
        nursery: trio.Nursery,
        peer_address: Callable[[str, str], str],
        plugin: Path | None = None,
        on_address: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = root
        self.pki = pki
        self.members = {n: MemberProcess(n, root) for n in names}
        self.crashes: list[dict[str, Any]] = []
        self._nursery = nursery
        self._peer_address = peer_address
        self._plugin = plugin
        self._on_address = on_address

    def __getitem__(self, name: str) -> MemberProcess:
        try:
            return self.members[name]
        except KeyError:
            raise ValidationError(f"no member {name!r}") from None

    def command(self, m: MemberProcess) -> list[str]:
        cmd = [sys.executable, "-m", "microtrio.testing._processes", "--name", m.name,
               "--state", str(m.state_dir), "--pki", str(self.pki.directory),
               "--founders", ",".join(self.members), "--listen", m.address]  # fmt: skip
        for peer in self.members:
            if peer != m.name:
                cmd += ["--peer", f"{peer}={self._peer_address(m.name, peer)}"]
        if self._plugin is not None:
            cmd += ["--plugin", str(self._plugin)]
        return cmd

    async def start(self, name: str) -> None:
        """Start the member (again) and wait until it listens."""
        m = self[name]
        self._note_exit(m)
        if m.running:
            return
        m.state_dir.mkdir(parents=True, exist_ok=True)
        with m.log_path.open("ab") as log:  # the child keeps its own descriptor
            process: trio.Process = await self._nursery.start(
                partial(
                    trio.run_process, self.command(m), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=log, check=False, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )  # fmt: skip
        m.process, m.paused, m.signalled = process, False, False
        line = b""
        assert process.stdout is not None
        with trio.move_on_after(_START_TIMEOUT):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                line += chunk
        await process.stdout.aclose()  # the member prints nothing else
        try:
            address = str(json.loads(line)["address"])
        except (ValueError, KeyError) as exc:
            await self.kill(name)
            raise UnavailableError(f"{name} did not start (see {m.log_path})") from exc
        m.address = address
        logger.info("campaign: %s started as pid %d on %s", name, process.pid, address)
        if self._on_address is not None:
            self._on_address(name, address)

    def _signal(self, m: MemberProcess, sig: int) -> None:
        if m.process is None or m.process.returncode is not None:
            return
        try:
            os.killpg(m.process.pid, sig)  # its own group: only what it started
        except ProcessLookupError:
            pass

    async def _wait_exit(self, m: MemberProcess) -> None:
        if m.process is not None:
            await m.process.wait()
            m.process = None
        m.paused = False

    async def kill(self, name: str) -> None:
        """``kill -9`` the member's process group and wait for it."""
        m = self[name]
        self._note_exit(m)
        m.signalled = True
        self._signal(m, signal.SIGKILL)
        await self._wait_exit(m)

    async def stop(self, name: str) -> None:
        """``SIGTERM`` (it hands leadership over and exits); ``SIGKILL`` after a deadline."""
        m = self[name]
        if m.paused:
            self._signal(m, signal.SIGCONT)
        self._note_exit(m)
        m.signalled = True
        self._signal(m, signal.SIGTERM)
        with trio.move_on_after(_STOP_TIMEOUT):
            await self._wait_exit(m)
            return
        logger.warning("campaign: %s ignored SIGTERM, killing it", name)
        await self.kill(name)

    async def pause(self, name: str) -> None:
        m = self[name]
        self._note_exit(m)
        if not m.running:
            raise UnavailableError(f"{name} is not running")
        self._signal(m, signal.SIGSTOP)
        m.paused = True
        await _wait_stopped(m)

    async def resume(self, name: str) -> None:
        m = self[name]
        self._signal(m, signal.SIGCONT)
        m.paused = False
        await _wait_stopped(m, stopped=False)

    async def aclose(self) -> None:
        """Kill every member (shielded: also on the way out of a cancelled run)."""
        with trio.CancelScope(shield=True), trio.move_on_after(_STOP_TIMEOUT):
            for name in self.members:
                await self.kill(name)

    def _note_exit(self, m: MemberProcess) -> None:
        """Record an exit the runner did not cause (a crash), once per process."""
        p = m.process
        if p is not None and p.returncode is not None and not m.signalled:
            m.signalled = True
            crash = {"member": m.name, "pid": p.pid, "returncode": p.returncode}
            logger.error("campaign: %s (pid %d) exited by itself: %s", m.name, p.pid, crash)
            self.crashes.append(crash)

    def check_crashes(self) -> list[dict[str, Any]]:
        """Every member that exited without being told to so far (see its log)."""
        for m in self.members.values():
            self._note_exit(m)
        return list(self.crashes)

    def addresses(self) -> Mapping[str, str]:
        return {n: m.address for n, m in self.members.items()}


if __name__ == "__main__":
    _args = _parse(sys.argv[1:])
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {_args.name} %(name)s %(levelname)s %(message)s"
    )
    trio.run(member_main, _args)
