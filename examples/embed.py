"""Embedding microtrio in an existing trio application, next to the application's own tasks.

The host owns the root nursery. The member is one more task in it (``await
nursery.start(app.run)`` returns once the member is ready); the host's own tasks run beside
it and use the member through its :class:`~microtrio.App` handle. Stopping is the host's
business: cancelling the nursery (Ctrl-C, or the ``--seconds`` deadline here) stops the
member too: its listeners close and its database is closed in a shielded, bounded
``finally``, so nothing is left running::

    python examples/embed.py --state-dir /tmp/embedded --seconds 5
    python -m examples.embed --state-dir /tmp/embedded          # until Ctrl-C

The first run bootstraps a one-member cluster on ``127.0.0.1`` (port chosen by the OS); later
runs restart it from the state directory. Prints ``ready <address>`` once the member is up,
a line per host tick, and ``stopped cleanly`` at the end.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import apsw
import trio

import microtrio

logger = logging.getLogger("embed")

SCHEMA = (
    microtrio.SchemaUpdate(
        "CREATE TABLE ticks (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL)",
        name="ticks",
    ),
)


async def record_ticks(app: microtrio.App, interval: float) -> None:
    """The host's own work: every ``interval`` seconds, write a row through the member."""
    daemon = app.daemon
    assert daemon is not None, "the member runs in this process"
    count = 0
    while True:
        now = trio.current_time()

        def insert(conn: apsw.Connection, at: float = now) -> None:
            conn.execute("INSERT INTO ticks (at) VALUES (?)", (at,))

        await daemon.state.database.transaction(insert)
        count += 1
        rows = await daemon.state.database.read(
            lambda conn: conn.execute("SELECT count(*) FROM ticks").fetchall()
        )
        print(f"tick {count}: {rows[0][0]} rows", flush=True)
        await trio.sleep(interval)


async def heartbeat_printer(interval: float) -> None:
    """Another host task with nothing to do with microtrio."""
    while True:
        await trio.sleep(interval)
        logger.debug("host still alive")


async def stop_on_signals(scope: trio.CancelScope) -> None:
    """Ctrl-C (SIGINT) or SIGTERM cancels the host's nursery: every task stops, the member
    included, each running its own cleanup."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("signal %s: stopping", signum)
            scope.cancel()
            return


async def run_host(
    state_dir: str,
    *,
    seconds: float | None,
    interval: float = 0.5,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The host application: a member plus two tasks of its own, in one nursery.

    ``started(address)`` once the member is up; returns after ``seconds`` (None: until
    cancelled), with the member stopped.
    """
    args = microtrio.DaemonArgs(version="1.0", schema_updates=SCHEMA, drain_timeout=2.0)
    app = microtrio.App(state_dir, args=args)
    with trio.move_on_after(seconds if seconds is not None else float("inf")):
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(stop_on_signals, nursery.cancel_scope)
            await nursery.start(app.run)
            if not (await app.status())["ready"]:
                await app.new_cluster("embedded", "127.0.0.1:0")
            address = str((await app.status())["address"])
            print(f"ready {address}", flush=True)
            task_status.started(address)
            nursery.start_soon(record_ticks, app, interval)
            nursery.start_soon(heartbeat_printer, interval)
    print("stopped cleanly", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between ticks")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(
        lambda: run_host(
            ns.state_dir, seconds=ns.seconds, interval=ns.interval, handle_signals=True
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
