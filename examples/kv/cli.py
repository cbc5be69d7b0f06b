"""``python -m examples.kv``: microtrio's commands, with ``daemon`` running the kv service.

The parser is the microd example's (``examples.microd.cli.build_parser``) with the kv
daemon's own flag:

* ``daemon --lease-read``: linearizable reads from the leader's lease instead of a
  heartbeat round per read batch (``DaemonArgs.lease_read``; faster, and safe only while
  the members' clocks run at about the same rate, see ``docs/howto/performance.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast

import microtrio

from ..microd.cli import build_parser as microd_parser
from ..microd.cli import run
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (errors are one ``Error: ...`` line)."""
    return run(build_parser(), argv)
