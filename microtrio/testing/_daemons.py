"""Real member daemons for the fault-injection campaign: spawned, formed, signalled.

Theory of operation
-------------------

Each member is the kv example run as a daemon (:mod:`._kvdaemon`), a separate process in its
own session and process group, so that ``kill -9``, ``SIGSTOP`` and ``SIGCONT`` hit exactly
that member. It starts uninitialised; :meth:`DaemonCluster.form` then does what an operator
does, over each member's control socket (a Unix socket, reachable from any network
namespace): ``POST /core/control`` to bootstrap the first member, a join token from a member
(``POST /core/control/tokens``) and ``POST /core/control`` with it for each of the others,
then waits until ``GET /core/1.0/cluster`` shows the roles the leader aims at.

With a :class:`~._netns.NetnsNetwork` each member runs inside its own namespace
(``ip netns exec``) and is bootstrapped or joined at its namespace address, so that address is
what the member table holds and what the other daemons dial: a link cut in the network is a
real partition of the daemons. The runner's clients cannot reach those addresses from the
host, so each member gets a *forwarder*: a small process in the hub namespace that accepts on
a Unix socket (in the run's folder) and connects to the member's TCP address. TLS stays end to
end (the forwarder copies bytes); the client still names the member's address in ``Host``.
Without namespaces members listen on ``127.0.0.1`` and clients connect directly.

The runner's requests present the target member's own ``server.crt`` (every member trusts
itself) and pin the cluster certificate. A separate client certificate added to the
truststore (``POST /core/internal/truststore``) would not last: every heartbeat round rewrites
the truststore from the member table.

A removed member resets itself in-process (a fresh, uninitialised daemon, new ``server.crt``);
:meth:`DaemonCluster.rejoin` joins it again with a fresh token, at a new port.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, final

import trio

from .._certs import client_ssl_context, load_cert_key_pair
from .._client import Client
from .._errors import MicrotrioError, UnavailableError, ValidationError
from .._state import StateDir
from ._netns import NetnsNetwork

__all__ = ["DaemonCluster", "DaemonMember"]

logger = logging.getLogger("microtrio.testing.campaign")

_READY_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 20.0
_POLL: Final = 0.1
ROOT: Final = Path(__file__).resolve().parent.parent.parent  # the checkout (examples/)

_FORWARD_SCRIPT: Final = """
import socket, sys, threading, os
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(128)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(conn):
    try:
        remote = socket.create_connection((host, port), timeout=3)
    except OSError:
        conn.close()
        return
    remote.settimeout(None)
    threading.Thread(target=pipe, args=(conn, remote), daemon=True).start()
    pipe(remote, conn)
    conn.close()
    remote.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@final
class DaemonMember:
    """One member: its process (when running), core address, log and state directory."""

    def __init__(self, name: str, root: Path, host: str) -> None:
        self.name = name
        self.state_dir = root / name
        self.log_path = root / f"{name}.log"
        self.host = host  # where it listens (its namespace address, or loopback)
        self.address = ""  # ip:port once initialised
        self.process: trio.Process | None = None
        self.forwarder: trio.Process | None = None
        self.uds: str | None = None
        self.paused = False
        self.signalled = False  # the runner killed or stopped it: an exit is expected
        self.member = False  # initialised and in the cluster (not removed)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def control(self) -> Client:
        return Client.unix(StateDir(self.state_dir).control_socket)


async def _wait_state(pid: int | None, stopped: bool) -> None:
    """Until the kernel shows the process as stopped (or not) (Linux; at most a second)."""
    stat = Path(f"/proc/{pid}/stat")
    with trio.move_on_after(1.0):
        while True:
            try:
                text = await trio.to_thread.run_sync(stat.read_text)
            except OSError:
                return
            if (text.rsplit(")", 1)[1].split()[0] in ("T", "t")) is stopped:
                return
            await trio.sleep(0.01)


@final
class DaemonCluster:
    """Spawns, forms and signals the member daemons (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        nursery: trio.Nursery,
        net: NetnsNetwork | None = None,
        heartbeat: float = 1.0,
        plugin: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.root = root
        self.net = net
        self.members = {
            n: DaemonMember(n, root, net.address(n) if net else "127.0.0.1") for n in names
        }
        self.crashes: list[dict[str, Any]] = []
        self._nursery = nursery
        self._heartbeat = heartbeat
        self._plugin = plugin
        self._seed = seed
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._uds: dict[str, str | None] = {}
        self._on_change: list[Any] = []

    def __getitem__(self, name: str) -> DaemonMember:
        try:
            return self.members[name]
        except KeyError:
            raise ValidationError(f"no member {name!r}") from None

    # -- how clients reach a member ------------------------------------------------------

    def route(self, address: str) -> tuple[ssl.SSLContext, str | None]:
        """For :class:`~._workloads.CampaignClient`: the member at ``address``."""
        context = self._contexts.get(address)
        if context is None:
            raise UnavailableError(f"no member at {address}")
        uds = self._uds.get(address)
        if self.net is not None and uds is None:  # never around the namespaces
            raise UnavailableError(f"no forwarder to {address}")
        return context, uds

    def on_change(self, callback: Any) -> None:
        """``callback(old_address)`` whenever a member's address or certificate changes."""
        self._on_change.append(callback)

    async def _learn(self, m: DaemonMember) -> None:
        """After (re)initialisation: the member's address, its client context, forwarder."""
        async with m.control() as client:
            status = await client.status()
        address = str(status.get("address") or "")
        if not address:
            raise UnavailableError(f"{m.name} has no address after init")
        old = m.address
        sd = StateDir(m.state_dir)

        def load() -> ssl.SSLContext:
            pair = load_cert_key_pair(sd.server_crt, sd.server_key)
            context = client_ssl_context(pair, sd.cluster_crt.read_bytes())
            context.check_hostname = False  # the pinned certificate is the only anchor
            return context

        context = await trio.to_thread.run_sync(load)
        if old:
            self._contexts.pop(old, None)
            self._uds.pop(old, None)
        if self.net is not None:
            await self._start_forwarder(m, address)
        m.address = address  # and only now may a client build its connection to it
        self._uds[address] = m.uds
        self._contexts[address] = context
        for callback in self._on_change:
            callback(old or address)
        logger.info("campaign: %s is at %s", m.name, address)

    async def _start_forwarder(self, m: DaemonMember, address: str) -> None:
        assert self.net is not None
        if m.forwarder is not None:
            self._signal(m.forwarder, signal.SIGKILL)
            await m.forwarder.wait()
        path = str(self.root / f".{m.name}.fwd")
        host, port = address.rsplit(":", 1)
        cmd = [*self.net.hub_prefix(), sys.executable, "-c", _FORWARD_SCRIPT, path, host, port]
        with (self.root / f"{m.name}.forwarder.log").open("ab") as log:
            process: trio.Process = await self._nursery.start(
                partial(
                    trio.run_process, cmd, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, check=False, start_new_session=True,
                )
            )  # fmt: skip
        with trio.move_on_after(_READY_TIMEOUT):
            while process.returncode is None:  # listening once a connection opens
                try:
                    sock = trio.socket.socket(trio.socket.AF_UNIX)
                    with sock:
                        await sock.connect(path)
                    break
                except OSError:
                    await trio.sleep(0.02)
        m.forwarder, m.uds = process, path

    # -- processes -----------------------------------------------------------------------

    def command(self, m: DaemonMember) -> list[str]:
        prefix = self.net.exec_prefix(m.name) if self.net is not None else []
        cmd = [*prefix, sys.executable, "-m", "microtrio.testing._kvdaemon",
               "--state", str(m.state_dir), "--heartbeat", str(self._heartbeat),
               "--seed", str(self._seed)]  # fmt: skip
        if self._plugin is not None:
            cmd += ["--plugin", str(self._plugin)]
        return cmd

    async def spawn(self, name: str, *, wait_ready: bool = True) -> None:
        """Start the member's daemon (again, on its state) and wait until it is ready."""
        m = self[name]
        self._note_exit(m)
        if m.running:
            return
        m.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with m.log_path.open("ab") as log:  # the child keeps its own descriptor
            process: trio.Process = await self._nursery.start(
                partial(
                    trio.run_process, self.command(m), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, check=False, start_new_session=True, env=env,
                )
            )  # fmt: skip
        m.process, m.paused, m.signalled = process, False, False
        logger.info("campaign: %s started as pid %d", name, process.pid)
        if wait_ready:
            await self.wait_ready(name)

    async def wait_ready(self, name: str, within: float = _READY_TIMEOUT) -> None:
        """Until ``GET /core/1.0/ready`` answers on the control socket."""
        m = self[name]
        with trio.move_on_after(within):
            while m.running:
                try:
                    async with m.control() as client:
                        await client.ready()
                    return
                except MicrotrioError:
                    await trio.sleep(_POLL)
        raise UnavailableError(f"{name} is not ready (see {m.log_path})")

    def _signal(self, process: trio.Process | None, sig: int) -> None:
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, sig)  # its own group: only what it started
        except ProcessLookupError:
            pass

    async def kill(self, name: str) -> None:
        """``kill -9`` the member and wait for it."""
        m = self[name]
        self._note_exit(m)
        m.signalled = True
        self._signal(m.process, signal.SIGKILL)
        if m.process is not None:
            await m.process.wait()
            m.process = None
        m.paused = False

    async def stop(self, name: str) -> None:
        """``SIGTERM`` (the daemon hands leadership over and exits); ``SIGKILL`` after a
        deadline."""
        m = self[name]
        if m.paused:
            self._signal(m.process, signal.SIGCONT)
        self._note_exit(m)
        m.signalled = True
        self._signal(m.process, signal.SIGTERM)
        with trio.move_on_after(_STOP_TIMEOUT):
            if m.process is not None:
                await m.process.wait()
                m.process = None
            m.paused = False
            return
        logger.warning("campaign: %s ignored SIGTERM, killing it", name)
        await self.kill(name)

    async def pause(self, name: str) -> None:
        m = self[name]
        self._note_exit(m)
        if not m.running:
            raise UnavailableError(f"{name} is not running")
        self._signal(m.process, signal.SIGSTOP)
        m.paused = True
        await _wait_state(m.pid, stopped=True)

    async def resume(self, name: str) -> None:
        m = self[name]
        self._signal(m.process, signal.SIGCONT)
        m.paused = False
        await _wait_state(m.pid, stopped=False)

    async def aclose(self) -> None:
        """Kill every member and forwarder (shielded: also on the way out of a cancelled
        run)."""
        with trio.CancelScope(shield=True), trio.move_on_after(_STOP_TIMEOUT):
            for m in self.members.values():
                await self.kill(m.name)
                if m.forwarder is not None:
                    self._signal(m.forwarder, signal.SIGKILL)
                    await m.forwarder.wait()
                    m.forwarder = None

    def _note_exit(self, m: DaemonMember) -> None:
        """Record an exit the runner did not cause (a crash), once per process."""
        p = m.process
        if p is not None and p.returncode is not None and not m.signalled:
            m.signalled = True
            crash = {"member": m.name, "pid": p.pid, "returncode": p.returncode}
            logger.error("campaign: %s (pid %d) exited by itself: %s", m.name, p.pid, crash)
            self.crashes.append(crash)

    def check_crashes(self) -> list[dict[str, Any]]:
        for m in self.members.values():
            self._note_exit(m)
        return list(self.crashes)

    # -- forming and membership ----------------------------------------------------------

    async def bootstrap(self, name: str) -> None:
        m = self[name]
        async with m.control() as client:
            await client.bootstrap(name, f"{m.host}:0")
        m.member = True
        await self._learn(m)

    async def join(self, name: str, via: str) -> None:
        """Join ``name`` with a fresh token issued by ``via`` (over its control socket)."""
        m = self[name]
        async with self[via].control() as client:
            token = await client.add_token(name)
        async with m.control() as client:
            await client.join(name, f"{m.host}:0", token)
        m.member = True
        await self._learn(m)

    async def form(self, within: float = 120.0) -> None:
        """Spawn every member, bootstrap the first, join the others, wait for the roles."""
        names = list(self.members)
        with trio.fail_after(within):
            async with trio.open_nursery() as starting:
                for name in names:
                    starting.start_soon(self.spawn, name)
            await self.bootstrap(names[0])
            for name in names[1:]:
                await self.join(name, names[0])
            await self.wait_roles()

    async def members_view(self) -> list[dict[str, Any]]:
        """``GET /core/1.0/cluster`` from the first running member that answers."""
        for m in self.members.values():
            if m.running and not m.paused and m.member:
                try:
                    with trio.move_on_after(5):
                        async with m.control() as client:
                            return await client.cluster_members()
                except MicrotrioError:
                    continue
        raise UnavailableError("no member lists the cluster")

    async def wait_roles(self, within: float = 60.0) -> None:
        """Until every member is listed and the voters are at the leader's target."""
        from .._cluster._roles import RoleTargets

        names = {n for n, m in self.members.items() if m.member}
        targets = RoleTargets()
        voters = targets.voters_for(len(names))
        with trio.move_on_after(within):
            while True:
                try:
                    listed = await self.members_view()
                except MicrotrioError:
                    listed = []
                roles = {str(x.get("name")): str(x.get("role", "")).lower() for x in listed}
                if names <= set(roles) and list(roles.values()).count("voter") == voters:
                    return
                await trio.sleep(0.3)
        raise UnavailableError(f"roles did not settle within {within} s")

    async def remove(self, name: str) -> None:
        """``DELETE /core/1.0/cluster/{name}`` through another running member."""
        m = self[name]
        for via in self.members.values():
            if via is not m and via.running and not via.paused and via.member:
                async with via.control() as client:
                    await client.remove_member(name)
                m.member = False
                return
        raise UnavailableError(f"no member to remove {name} through")

    async def rejoin(self, name: str) -> None:
        """Join a removed member again (it reset itself to an uninitialised daemon)."""
        m = self[name]
        if not m.running:
            await self.spawn(name)
        with trio.move_on_after(_READY_TIMEOUT):
            while True:  # the reset runs after the removal's answer
                async with m.control() as client:
                    status = await client.status()
                if not status.get("address"):
                    break
                await trio.sleep(_POLL)
        await self.wait_ready(name)
        via = next(
            (v.name for v in self.members.values()
             if v is not m and v.running and not v.paused and v.member), None,
        )  # fmt: skip
        if via is None:
            raise UnavailableError(f"no member to issue {name} a token")
        await self.join(name, via)
