"""``python -m microtrio demo``: a local cluster in one command.

Theory of operation
-------------------
The demo starts N member processes (``python -m microtrio._demo member``: a microtrio daemon
running a small key-value application, each in its own session so a terminal's Ctrl-C reaches
only the demo), each with a state directory under one temporary root. It waits until they
answer, bootstraps the first on ``127.0.0.1:0``, joins the others with join tokens issued by the
first (progress lines throughout), then, once a second, writes one key through a member chosen
in turn and shows the members (role, status, applied index) and the leader each member names.

Ctrl-C, SIGTERM or the end of ``--duration`` stop it: every member gets
``POST /core/control/shutdown``, a member still running after a grace period is killed, and the
temporary root is removed unless ``--keep``. The demo exits 0 after a clean stop.

The member application's ``GET /1.0/demo/status`` reports the member's view: its applied index
and the leader it knows, which the REST API does not otherwise expose.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from . import __version__
from ._api._resources import Endpoint, EndpointAction, Resources, Server
from ._app import App
from ._cli import add_log_format_option
from ._client import Client
from ._cluster._roles import RoleTargets
from ._daemon import DaemonArgs
from ._db import SchemaUpdate
from ._errors import BadRequestError, MicrotrioError, NotFoundError
from ._log import LOG_FORMATS, configure_logging
from ._replication import node_id_for

__all__ = ["add_demo_command", "demo_args", "run_demo"]

logger = logging.getLogger("microtrio.demo")

DEMO_VERSION = "1.0"
_SCHEMA = (SchemaUpdate("CREATE TABLE demo_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),)
_REQUEST_TIMEOUT = 2.0


# -- the member application ---------------------------------------------------------------


def _leader_of(app: App) -> tuple[int, int]:
    """(leader id, applied index) as this member knows them."""
    daemon = app.daemon
    replication = daemon.replication if daemon is not None else None
    if replication is None:
        return 0, 0
    return replication.leader_id, replication.applied_index


def demo_args(app: App, *, heartbeat_interval: float = 1.0) -> DaemonArgs:
    """The demo members' application: ``PUT/GET /1.0/kv/{key}`` and ``GET /1.0/demo/status``."""

    async def put(state: Any, req: Any) -> Any:
        key = str((req.view_args or {}).get("key", ""))
        body = await req.get_json(silent=True)
        if not isinstance(body, dict) or "value" not in body:
            raise BadRequestError('Expected {"value": ...}')
        value = str(body["value"])

        def write(conn: Any) -> None:
            conn.execute(
                "INSERT INTO demo_kv VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value),
            )

        await state.database.transaction(write)
        return {}

    async def get(state: Any, req: Any) -> Any:
        key = str((req.view_args or {}).get("key", ""))

        def read(conn: Any) -> str | None:
            for (value,) in conn.execute("SELECT value FROM demo_kv WHERE key = ?", (key,)):
                return str(value)
            return None

        value = await state.database.read(read)
        if value is None:
            raise NotFoundError(f"No key {key!r}")
        return {"key": key, "value": value}

    async def status(state: Any, req: Any) -> Any:
        leader, applied = _leader_of(app)
        return {"name": state.name, "leader_id": leader, "applied_index": applied}

    server = Server(
        resources=[
            Resources(
                "1.0",
                [
                    Endpoint("kv/{key}", get=EndpointAction(get), put=EndpointAction(put)),
                    Endpoint("demo/status", get=EndpointAction(status)),
                ],
            )
        ],
        core_api=True,
        serve_unix=True,
    )
    return DaemonArgs(
        version=DEMO_VERSION,
        schema_updates=_SCHEMA,
        servers={"demo": server},
        heartbeat_interval=heartbeat_interval,
        drain_timeout=3.0,
    )


async def _run_member(state_dir: str, heartbeat: float) -> None:
    app = App(state_dir)
    await app.start(demo_args(app, heartbeat_interval=heartbeat))


# -- the demo -----------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    state_dir: Path
    log: Path
    process: trio.Process | None = None
    joined: bool = False

    @property
    def app(self) -> App:
        return App(self.state_dir)

    def client(self) -> Client:
        return Client.unix(self.state_dir / "control.socket")


@dataclass
class _Stats:
    ok: int = 0
    failed: int = 0
    last_error: str = ""
    leader: str = "-"


class _Output:
    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self._stream = stream
        self.live = live

    def line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def frame(self, lines: Sequence[str]) -> None:
        if self.live:
            self._stream.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            self._stream.flush()
        else:
            for text in lines:
                self.line(text)


async def _start_members(
    out: _Output,
    nursery: trio.Nursery,
    members: list[_Member],
    heartbeat: float,
    log_format: str = "text",
) -> None:
    for member in members:
        with member.log.open("ab") as log:  # the child keeps its own descriptor
            member.process = await nursery.start(
                partial(
                    trio.run_process,
                    [
                        sys.executable,
                        "-m",
                        "microtrio._demo",
                        "member",
                        "--state-dir",
                        str(member.state_dir),
                        "--heartbeat",
                        str(heartbeat),
                        "--log-format",
                        log_format,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    check=False,
                    start_new_session=True,  # a terminal's Ctrl-C reaches the demo only
                )
            )
        assert member.process is not None
        out.line(f"      {member.name}: pid {member.process.pid}, log {member.log}")


async def _form(out: _Output, members: list[_Member], timeout: float) -> None:  # noqa: ASYNC109
    started = trio.current_time()

    def took() -> str:
        return f"({trio.current_time() - started:.1f}s)"

    out.line(f"[2/4] waiting for {len(members)} daemons to answer ...")
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(partial(member.app.ready, timeout=timeout, poll_interval=0.1))
    out.line(f"      all daemons ready {took()}")
    first = members[0]
    out.line(f"[3/4] bootstrapping {first.name} ...")
    await first.app.new_cluster(first.name, "127.0.0.1:0")
    first.joined = True
    address = (await first.app.status())["address"]
    out.line(f"      {first.name} leads a new cluster at {address} {took()}")
    for member in members[1:]:
        out.line(f"      joining {member.name} with a token from {first.name} ...")
        token = await first.app.new_join_token(member.name, 600)
        try:
            await member.app.join_cluster(member.name, "127.0.0.1:0", token)
        except MicrotrioError as exc:
            out.line(f"      {member.name} could not join: {exc}")
            continue
        member.joined = True
        out.line(f"      {member.name} joined {took()}")
    joined = [m for m in members if m.joined]
    targets = RoleTargets()
    voters, standbys = targets.voters_for(len(joined)), targets.standbys_for(len(joined))
    out.line(f"[4/4] waiting for {voters} voters and {standbys} stand-bys (heartbeats) ...")
    shown = ""
    with trio.move_on_after(timeout):
        while True:
            roles = [str(m.get("role", "")).lower() for m in await first.app.cluster_members()]
            now = ", ".join(f"{roles.count(r)} {r}" for r in sorted(set(roles)))
            if now != shown:
                out.line(f"      roles: {now} {took()}")
                shown = now
            if roles.count("voter") == voters and roles.count("stand-by") == standbys:
                break
            await trio.sleep(0.2)
    out.line(f"      formed: {len(joined)} members {took()}")


async def _status_of(member: _Member) -> dict[str, Any]:
    with trio.move_on_after(_REQUEST_TIMEOUT):
        try:
            async with member.client() as client:
                result: dict[str, Any] = await client.query("GET", "/1.0/demo/status")
                return result
        except MicrotrioError:
            pass
    return {}


async def _view(members: list[_Member], stats: _Stats, elapsed: float) -> list[str]:
    joined = [m for m in members if m.joined]
    statuses = {m.name: await _status_of(m) for m in joined}
    listing: list[dict[str, Any]] = []
    for member in joined:
        with trio.move_on_after(_REQUEST_TIMEOUT):
            try:
                listing = await member.app.cluster_members()
                break
            except MicrotrioError:
                continue
    by_id = {node_id_for(m.name): m.name for m in members}
    leaders = {by_id.get(int(s.get("leader_id") or 0), "-") for s in statuses.values() if s}
    leader = leaders.pop() if len(leaders) == 1 else "?" if leaders else "-"
    stats.leader = leader
    lines = [
        f"microtrio demo: {len(joined)} members, leader {leader}, "
        f"writes ok={stats.ok} failed={stats.failed}, {elapsed:.0f}s (Ctrl-C stops)",
        f"  {'NAME':<10} {'ADDRESS':<22} {'ROLE':<9} {'STATUS':<8} {'APPLIED':>7}  LEADER SEEN",
    ]
    roles = {str(m.get("name")): m for m in listing}
    for member in joined:
        row, status = roles.get(member.name, {}), statuses.get(member.name, {})
        seen = by_id.get(int(status.get("leader_id") or 0), "-") if status else "down"
        lines.append(
            f"  {member.name:<10} {str(row.get('address', '')):<22} "
            f"{str(row.get('role', '')):<9} {str(row.get('status', '')):<8} "
            f"{status.get('applied_index', '-')!s:>7}  {seen}"
        )
    if stats.last_error:
        lines.append(f"  last write error: {stats.last_error}")
    return lines


async def _write(members: list[_Member], stats: _Stats, counter: int) -> None:
    joined = [m for m in members if m.joined]
    member = joined[counter % len(joined)]
    with trio.move_on_after(_REQUEST_TIMEOUT) as scope:
        try:
            async with member.client() as client:
                await client.query("PUT", f"/1.0/kv/key{counter}", {"value": f"v{counter}"})
            stats.ok += 1
            return
        except MicrotrioError as exc:
            stats.last_error = f"{member.name}: {exc}"
    if scope.cancelled_caught:
        stats.last_error = f"{member.name}: timed out"
    stats.failed += 1


async def _stop(out: _Output, members: list[_Member], grace: float) -> None:
    out.line("stopping the members ...")
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(_stop_one, member, grace)
    out.line("all members stopped")


async def _stop_one(member: _Member, grace: float) -> None:
    process = member.process
    if process is None or process.returncode is not None:
        return
    with trio.move_on_after(grace):
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        await process.wait()
        return
    process.kill()
    await process.wait()


async def run_demo(ns: argparse.Namespace, out: _Output | None = None) -> int:
    """The ``demo`` command (see the module docstring); returns the exit status."""
    out = out or _Output(sys.stdout, live=not ns.no_live and sys.stdout.isatty())
    root = Path(ns.dir) if ns.dir else Path(tempfile.mkdtemp(prefix="microtrio-demo-"))
    members = [
        _Member(f"member{k}", root / f"member{k}", root / f"member{k}.log")
        for k in range(1, ns.members + 1)
    ]
    root.mkdir(parents=True, exist_ok=True)
    out.line(f"microtrio {__version__} demo: {ns.members} members under {root}")
    status = 0
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                interrupted = trio.Event()

                async def watch() -> None:
                    async for signum in signals:
                        out.line(f"received {signal.Signals(signum).name}")
                        interrupted.set()
                        return

                nursery.start_soon(watch)
                with trio.CancelScope() as work:
                    nursery.start_soon(_cancel_on, interrupted, work)
                    try:
                        out.line(f"[1/4] starting {ns.members} member processes ...")
                        await _start_members(out, nursery, members, ns.heartbeat, ns.log_format)
                        await _form(out, members, ns.timeout)
                        await _live(out, members, ns.duration)
                    except (MicrotrioError, OSError) as exc:
                        out.line(f"Error: {exc} (member logs: {root}/member*.log)")
                        status = 1
                await _stop(out, members, grace=10.0)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for member in members:
                if member.process is not None and member.process.returncode is None:
                    member.process.kill()
            if not ns.keep:
                await trio.to_thread.run_sync(partial(shutil.rmtree, root, ignore_errors=True))
    out.line(f"state kept in {root}" if ns.keep else f"removed {root}")
    return status


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _live(out: _Output, members: list[_Member], duration: float) -> None:
    stats = _Stats()
    started = trio.current_time()
    counter = 0
    try:
        with trio.move_on_after(duration if duration > 0 else float("inf")):
            while True:
                tick = trio.current_time()
                await _write(members, stats, counter)
                counter += 1
                out.frame(await _view(members, stats, trio.current_time() - started))
                await trio.sleep_until(tick + 1.0)
    finally:  # also after Ctrl-C
        joined = sum(1 for m in members if m.joined)
        out.line(
            f"summary: {joined} members, leader {stats.leader}, "
            f"{stats.ok} writes ok, {stats.failed} failed"
        )


# -- command line -------------------------------------------------------------------------


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` to ``python -m microtrio``'s subcommands (no state directory: the demo
    makes its own)."""
    text = "run a local cluster of member processes with a demo key-value application"
    p: argparse.ArgumentParser = sub.add_parser("demo", help=text, description=text)
    p.add_argument("-v", "--verbose", action="store_true", help="show informational messages")
    p.add_argument("-d", "--debug", action="store_true", help="show debug messages")
    p.add_argument("--members", type=int, default=3, help="number of members (default 3)")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds of live view (default 0: until Ctrl-C)",
    )
    p.add_argument("--no-live", action="store_true", help="plain lines (for logs, non-TTY)")
    p.add_argument("--keep", action="store_true", help="keep the state directories on exit")
    add_log_format_option(p)  # of the demo itself and of its members' log files
    p.add_argument("--dir", default="", help="root of the state directories (default: temp)")
    p.add_argument(
        "--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds (default 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds allowed to form (default 60)"
    )
    p.set_defaults(func=None, standalone=main_demo)


def main_demo(ns: argparse.Namespace) -> int:
    """Run the demo (``python -m microtrio demo``)."""
    if ns.members < 1:
        print("Error: --members must be at least 1", file=sys.stderr)
        return 1
    try:
        return trio.run(run_demo, ns)
    except MicrotrioError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _member_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m microtrio._demo member")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    ns = parser.parse_args(argv)
    configure_logging(logging.INFO, ns.log_format)
    trio.run(_run_member, ns.state_dir, ns.heartbeat)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["member"]:
        sys.exit(
            "usage: python -m microtrio._demo member --state-dir DIR [--heartbeat S]"
            " [--log-format text|json]"
        )
    sys.exit(_member_main(sys.argv[2:]))
