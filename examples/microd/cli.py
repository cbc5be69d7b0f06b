"""``python -m examples.microd``: microtrio's commands plus the example's own.

The parser is microtrio's (``init``, ``tokens``, ``cluster``, ``sql``, ``waitready``,
``shutdown``, ...) with two changes: ``daemon`` runs the member with the example's
:func:`~examples.microd.daemon_args`, and ``extended [ADDRESS]`` calls ``POST /1.0/extended``
over the control socket, or over mutual TLS on another member's address.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import trio

import microtrio
from microtrio._cli import build_parser as microtrio_parser

from .app import VERSION, daemon_args

__all__ = ["build_parser", "main", "run"]


ArgsFactory = Callable[..., microtrio.DaemonArgs]


async def _cmd_daemon(factory: ArgsFactory, app: microtrio.App, ns: argparse.Namespace) -> None:
    args = factory(heartbeat_interval=ns.heartbeat, socket_group=ns.socket_group or None)
    await app.start(args)


async def _cmd_extended(app: microtrio.App, ns: argparse.Namespace) -> None:
    body = {"message": ns.message}
    with trio.fail_after(ns.timeout):
        if ns.address:
            client = await app.remote_client(ns.address)
        else:
            client = app.local_client()
        async with client:
            result = await client.query("POST", "/1.0/extended", body)
    print(result if isinstance(result, str) else json.dumps(result))


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:  # argparse keeps sub-parsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("microtrio's parser has no sub-commands")  # pragma: no cover


def build_parser(
    *,
    args_factory: ArgsFactory = daemon_args,
    prog: str = "python -m examples.microd",
    version: str = VERSION,
    extended: bool = True,
) -> argparse.ArgumentParser:
    """microtrio's parser whose ``daemon`` runs ``args_factory(heartbeat_interval=...,
    socket_group=...)``; with ``extended``, also the ``extended [ADDRESS]`` command."""
    parser = microtrio_parser()
    parser.prog = prog
    parser.description = f"{prog}: an example daemon on microtrio and its admin commands"
    sub = _subcommands(parser)
    daemon = cast(argparse.ArgumentParser, sub.choices["daemon"])
    daemon.set_defaults(func=partial(_cmd_daemon, args_factory))
    for action in (*parser._actions, *daemon._actions):
        if isinstance(action, argparse._VersionAction):
            action.version = version
    if not extended:
        return parser
    p = sub.add_parser(
        "extended",
        help="call POST /1.0/extended here or on ADDRESS",
        description="call POST /1.0/extended on this member, or on the member at ADDRESS",
    )
    p.add_argument("address", nargs="?", default="", help="another member's ip:port")
    p.add_argument("-m", "--message", default="Testing 1 2 3...", help="the message to send")
    p.add_argument("-t", "--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--state-dir", default=argparse.SUPPRESS, help="(default: $STATE_DIR)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("-d", "--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_extended)
    return parser


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(
    argv: Sequence[str] | None = None,
    *,
    args_factory: ArgsFactory = daemon_args,
    prog: str = "python -m examples.microd",
    version: str = VERSION,
) -> int:
    """Entry point; returns the exit status (errors are one ``Error: ...`` line).
    Other examples reuse it with their own ``args_factory`` (no ``extended`` command)."""
    parser = build_parser(
        args_factory=args_factory, prog=prog, version=version, extended=args_factory is daemon_args
    )
    return run(parser, argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` (built by :func:`build_parser`, perhaps extended) and
    run the chosen command; returns the exit status (errors are one ``Error: ...`` line)."""
    ns = parser.parse_args(argv)
    state_dir = getattr(ns, "state_dir", None) or os.environ.get("STATE_DIR", "")
    if not state_dir:
        print("Error: no state directory: pass --state-dir or set STATE_DIR", file=sys.stderr)
        return 1
    level = logging.WARNING
    if getattr(ns, "verbose", False):
        level = logging.INFO
    if getattr(ns, "debug", False):
        level = logging.DEBUG
    # the member name on every line; `daemon --log-format json` for one JSON object a line
    microtrio.configure_logging(level, getattr(ns, "log_format", "text"))
    app = microtrio.App(state_dir)
    try:
        trio.run(ns.func, app, ns)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if isinstance(leaf, trio.TooSlowError):
            print("Error: timed out", file=sys.stderr)
            return 1
        if isinstance(leaf, microtrio.MicrotrioError | OSError):
            print(f"Error: {leaf}", file=sys.stderr)
            return 1
        raise
    return 0
