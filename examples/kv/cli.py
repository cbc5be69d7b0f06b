"""``python -m examples.kv``: microtrio's commands, with ``daemon`` running the kv service.

The parser is the microd example's (``examples.microd.cli.build_parser``) with the kv
daemon's own flag:

* ``daemon --lease-read``: linearizable reads from the leader's lease instead of a
  heartbeat round per read batch (``DaemonArgs.lease_read``; faster, and safe only while
  the members' clocks run at about the same rate, see ``docs/howto/performance.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import cast

import trio

import microtrio

from ..microd.cli import build_parser as microd_parser
from .service import VERSION, daemon_args

__all__ = ["build_parser", "main"]

PROG = "python -m examples.kv"


async def _cmd_daemon(app: microtrio.App, ns: argparse.Namespace) -> None:
    args = daemon_args(
        heartbeat_interval=ns.heartbeat,
        socket_group=ns.socket_group or None,
        lease_read=ns.lease_read,
    )
    await app.start(args)


def build_parser() -> argparse.ArgumentParser:
    """microtrio's commands; ``daemon`` runs the kv service and takes ``--lease-read``."""
    parser = microd_parser(args_factory=daemon_args, prog=PROG, version=VERSION, extended=False)
    parser.description = f"{PROG}: the replicated key-value example and its admin commands"
    for action in parser._actions:  # argparse keeps sub-parsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            daemon = cast(argparse.ArgumentParser, action.choices["daemon"])
            break
    else:  # pragma: no cover
        raise RuntimeError("the parser has no daemon command")
    daemon.add_argument(
        "--lease-read",
        action="store_true",
        help="serve linearizable reads from the leader's lease (no heartbeat round per "
        "read; relies on the members' clocks running at about the same rate)",
    )
    daemon.set_defaults(func=_cmd_daemon)
    return parser


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (errors are one ``Error: ...`` line)."""
    ns = build_parser().parse_args(argv)
    state_dir = getattr(ns, "state_dir", None) or os.environ.get("STATE_DIR", "")
    if not state_dir:
        print("Error: no state directory: pass --state-dir or set STATE_DIR", file=sys.stderr)
        return 1
    level = logging.WARNING
    if getattr(ns, "verbose", False):
        level = logging.INFO
    if getattr(ns, "debug", False):
        level = logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
    try:
        trio.run(ns.func, microtrio.App(state_dir), ns)
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
