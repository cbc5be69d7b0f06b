"""``python -m microtrio``: the member daemon and the admin commands (microd + microctl).

The only place that configures logging (:func:`._log.configure_logging`: the member name
on every line, ``--log-format json`` on the daemon commands). Every error is one line on stderr
(``Error: ...``) and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio
import yaml

from . import __version__
from ._app import App
from ._certs import fingerprint
from ._cli_cluster import add_cluster_commands
from ._daemon import DaemonArgs
from ._errors import MicrotrioError
from ._log import LOG_FORMATS, configure_logging, unconfigure_logging

__all__ = ["add_log_format_option", "main", "parse_duration"]

FORMATS = ("table", "json", "yaml", "csv", "compact")

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """A Go duration (``3h``, ``1m30s``, ``500ms``, ``0``) in seconds; a bare number is
    seconds. Raises ValueError."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?", text):
        return float(text)
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


# -- output -----------------------------------------------------------------------------


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Rows as a table, compact columns, CSV, JSON or YAML (list of objects)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    if fmt in ("json", "yaml"):
        keys = [h.lower().replace(" ", "_") for h in headers]
        objects = [dict(zip(keys, row, strict=True)) for row in cells]
        if fmt == "json":
            return json.dumps(objects, indent=2)
        return yaml.safe_dump(objects, sort_keys=False).rstrip("\n")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    if fmt == "compact":
        lines = [headers, *cells]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in cells), rule])


# -- commands ---------------------------------------------------------------------------


async def _cmd_daemon(app: App, ns: argparse.Namespace) -> None:
    args = DaemonArgs(
        version=__version__,
        heartbeat_interval=ns.heartbeat,
        socket_group=ns.socket_group or None,
    )
    await app.start(args)


async def _cmd_init(app: App, ns: argparse.Namespace) -> None:
    config = dict(ns.config or [])
    with trio.fail_after(30):
        if ns.bootstrap:
            await app.new_cluster(ns.name, ns.address, config)
        else:
            await app.join_cluster(ns.name, ns.address, ns.token, config)


async def _cmd_tokens_add(app: App, ns: argparse.Namespace) -> None:
    print(await app.new_join_token(ns.name, ns.expire_after))


async def _cmd_tokens_list(app: App, ns: argparse.Namespace) -> None:
    records = await app.list_join_tokens()
    rows = [[r.get("name"), r.get("token"), r.get("expires_at")] for r in records]
    print(render(["NAME", "TOKENS", "EXPIRES AT"], rows, ns.format))


async def _cmd_tokens_revoke(app: App, ns: argparse.Namespace) -> None:
    await app.revoke_join_token(ns.name)


async def _cmd_cluster_list(app: App, ns: argparse.Namespace) -> None:
    members = await app.cluster_members()
    rows = []
    for member in members:
        cert = member.get("certificate") or ""
        fp = fingerprint(cert)[:12] if cert else ""
        rows.append(
            [
                member.get("name"),
                member.get("address"),
                member.get("role"),
                fp,
                member.get("status"),
            ]
        )
    print(render(["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"], rows, ns.format))


async def _cmd_sql(app: App, ns: argparse.Namespace) -> None:
    query = ns.query
    if query == "-":
        query = await trio.to_thread.run_sync(sys.stdin.read)
    result = await app.sql(query)
    if isinstance(result, str):
        print(result, end="" if result.endswith("\n") else "\n")
        return
    for item in result.get("Results") or []:
        if item.get("type") == "select":
            print(render(item.get("columns") or [], item.get("rows") or [], "table"))
        else:
            print(f"Rows affected: {item.get('rows_affected', 0)}")


async def _cmd_waitready(app: App, ns: argparse.Namespace) -> None:
    await app.ready(timeout=ns.timeout)


async def _cmd_shutdown(app: App, ns: argparse.Namespace) -> None:
    with trio.fail_after(60):
        await app.shutdown()


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help="the member's state directory (default: $STATE_DIR)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show informational messages",
    )
    common.add_argument(
        "-d", "--debug", action="store_true", default=argparse.SUPPRESS, help="show debug messages"
    )

    parser = argparse.ArgumentParser(
        prog="python -m microtrio",
        parents=[common],
        description="microtrio member daemon and administration commands",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[..., Any], help_text: str, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        p.set_defaults(func=fn)
        return p

    p = command("daemon", _cmd_daemon, "run the member daemon in the foreground")
    p.add_argument(
        "--socket-group",
        default=os.environ.get("SOCKET_GROUP", ""),
        help="group owning control.socket (default: $SOCKET_GROUP)",
    )
    p.add_argument(
        "--heartbeat",
        type=_duration,
        default=10.0,
        help="heartbeat interval, a duration such as 10s (default 10s)",
    )
    p.add_argument("--version", action="version", version=__version__)
    add_log_format_option(p)

    p = command("init", _cmd_init, "bootstrap a new cluster or join one with a token")
    p.add_argument("name", help="this member's name (FQDN-style)")
    p.add_argument("address", help="this member's ip:port")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bootstrap", action="store_true", help="bootstrap a new cluster")
    mode.add_argument("--token", help="join an existing cluster with this join token")
    p.add_argument(
        "--config",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="init configuration passed to the hooks (repeatable)",
    )

    tokens = command("tokens", _no_subcommand, "manage join tokens")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    p = command("add", _cmd_tokens_add, "issue a join token for a new member", tsub)
    p.add_argument("name", help="name of the member that will join")
    p.add_argument(
        "-e",
        "--expire-after",
        type=_duration,
        default=3 * 3600.0,
        help="token lifetime, a duration such as 3h (default 3h; 0 = never)",
    )
    p = command("list", _cmd_tokens_list, "list unexpired join tokens", tsub)
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p = command("revoke", _cmd_tokens_revoke, "revoke a join token", tsub)
    p.add_argument("name")

    cluster = command("cluster", _no_subcommand, "inspect the cluster")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = command("list", _cmd_cluster_list, "list the cluster members", csub)
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    add_cluster_commands(csub, command)

    p = command("sql", _cmd_sql, "run SQL on the cluster database")
    p.add_argument("query", help="SQL text, '-' to read stdin, '.dump' or '.schema'")

    p = command("waitready", _cmd_waitready, "wait until the daemon is ready")
    p.add_argument("-t", "--timeout", type=float, default=0.0, help="seconds to wait (0 = forever)")

    command("shutdown", _cmd_shutdown, "stop the daemon")
    from ._demo import add_demo_command  # the demo needs no state directory

    add_demo_command(sub)
    return parser


async def _no_subcommand(app: App, ns: argparse.Namespace) -> None:  # pragma: no cover
    raise MicrotrioError("a subcommand is required")


def _configure_logging(ns: argparse.Namespace) -> logging.Handler:
    """The only place that configures logging: stderr, the member name on every line
    (``[name]``, or the ``member`` field of ``--log-format json``)."""
    level = logging.WARNING
    if getattr(ns, "verbose", False):
        level = logging.INFO
    if getattr(ns, "debug", False):
        level = logging.DEBUG
    return configure_logging(level, getattr(ns, "log_format", "text"))


def add_log_format_option(parser: argparse.ArgumentParser) -> None:
    """``--log-format text|json`` (for the commands that run daemons)."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines on stderr: text (default) or json, one object per line with time, "
        "level, logger, member, message and exc_info",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    state_dir = getattr(ns, "state_dir", None) or os.environ.get("STATE_DIR", "")
    standalone = getattr(ns, "standalone", None)  # demo: runs its own members
    if not state_dir and standalone is None:
        print("Error: no state directory: pass --state-dir or set STATE_DIR", file=sys.stderr)
        return 1
    handler = _configure_logging(ns)
    try:
        if standalone is not None:
            return int(standalone(ns))
        return _run(App(state_dir), ns)
    finally:  # main() may run in-process (tests): leave no handler behind
        unconfigure_logging(handler)


def _run(app: App, ns: argparse.Namespace) -> int:
    try:
        trio.run(ns.func, app, ns)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if isinstance(leaf, trio.TooSlowError):
            print("Error: timed out", file=sys.stderr)
            return 1
        if isinstance(leaf, MicrotrioError | OSError):
            print(f"Error: {leaf}", file=sys.stderr)
            return 1
        raise
    return 0


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
