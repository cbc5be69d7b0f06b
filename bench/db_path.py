"""The database + replication path alone, without HTTP: a 3-member cluster in ONE process.

    python bench/db_path.py [--op execute|transaction|read|stale] [-c 1] [-t 5]
                            [--on leader|follower|all] [--lease-read] [--inline]

Members are the test harness's (``tests/replication/_raft_cluster.py``: real mutual-TLS
websockets on 127.0.0.1, durable log with fdatasync, APSW) with the production
``DriverConfig`` defaults. ``-c`` tasks call the Database API directly for ``-t`` seconds
(after a 1 s warm-up) on the chosen members. Prints ops/s, p50/p99 latency, the process CPU
per operation (all three members together: ``time.process_time``, so a busy shared machine
inflates wall-clock figures much more than this one) and how many worker-thread hand-offs
(``trio.to_thread.run_sync`` calls, all members) and how many Raft-channel messages (all
members, by type) each operation cost.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "replication"))
sys.path.insert(0, str(ROOT))

from _raft_cluster import Member, open_cluster  # noqa: E402

from microtrio._replication import DriverConfig  # noqa: E402
from microtrio._replication._transport import Transport  # noqa: E402

_hops = 0
_messages: dict[str, int] = {}


def _count_messages() -> None:
    """Count every message the members hand to their transports, by type."""
    original = Transport.send

    def counted(self: Any, messages: Any) -> None:
        messages = list(messages)
        for msg in messages:
            kind = type(msg).__name__
            _messages[kind] = _messages.get(kind, 0) + 1
        original(self, messages)

    Transport.send = counted  # type: ignore[method-assign]


def _count_hops() -> None:
    original = trio.to_thread.run_sync

    async def counted(*args: Any, **kwargs: Any) -> Any:
        global _hops
        _hops += 1
        return await original(*args, **kwargs)

    trio.to_thread.run_sync = counted  # type: ignore[assignment]


async def _op(member: Member, op: str, key: int, serial: int, inline: bool) -> None:
    db = member.db
    if op == "execute":
        await db.execute(
            "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, serial),
        )
    elif op == "transaction":
        await db.transaction(
            lambda conn: conn.execute(
                "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                (key, serial),
            )
        )
    else:
        await db.read(
            lambda conn: conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchall(),
            stale=op == "stale",
            inline=inline,
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    global _hops
    config = DriverConfig(lease_read=args.lease_read)
    with tempfile.TemporaryDirectory(prefix="db-path.", dir=args.dir) as tmp:
        async with open_cluster(Path(tmp), 3, driver_config=config) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(  # (transaction: the script also runs on older trees)
                lambda conn: conn.execute(
                    "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER); INSERT INTO kv VALUES (0, 0)"
                )
            )
            members = cluster.running()
            if args.on == "leader":
                targets = [leader]
            elif args.on == "follower":
                targets = [m for m in members if m is not leader]
            else:
                targets = members
            for m in members:
                await m.db.read(lambda conn: None)
            latencies: list[float] = []
            counters = {"serial": 0, "errors": 0}
            kinds: dict[str, int] = {}
            measuring = False

            async def client(n: int) -> None:
                member = targets[n % len(targets)]
                while True:
                    counters["serial"] += 1
                    start = time.perf_counter()
                    try:
                        await _op(member, args.op, n % 64, counters["serial"], args.inline)
                    except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                        counters["errors"] += 1
                        kind = f"{type(exc).__name__}: {str(exc)[:60]}"
                        kinds[kind] = kinds.get(kind, 0) + 1
                        continue
                    if measuring:
                        latencies.append(time.perf_counter() - start)

            async with trio.open_nursery() as nursery:
                for n in range(args.concurrency):
                    nursery.start_soon(client, n)
                await trio.sleep(1.0)
                measuring = True
                prof = cProfile.Profile() if args.profile else None
                if prof is not None:
                    prof.enable()
                msgs0 = dict(_messages)
                hops0, cpu0, wall0 = _hops, time.process_time(), time.perf_counter()
                await trio.sleep(args.duration)
                if prof is not None:
                    prof.disable()
                    stats = pstats.Stats(prof, stream=sys.stderr)
                    stats.sort_stats(args.profile).print_stats(args.top)
                ops = len(latencies)
                msgs = {k: v - msgs0.get(k, 0) for k, v in _messages.items()}
                hops, cpu, wall = (
                    _hops - hops0,
                    time.process_time() - cpu0,
                    time.perf_counter() - wall0,
                )
                nursery.cancel_scope.cancel()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "op": args.op,
        "on": args.on,
        "c": args.concurrency,
        "lease_read": args.lease_read,
        "inline": args.inline,
        "ops_per_s": round(ops / wall, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "cpu_ms_per_op": round(cpu * 1000 / max(ops, 1), 3),
        "cpu_pct": round(100 * cpu / wall, 1),
        "thread_hops_per_op": round(hops / max(ops, 1), 2),
        "messages_per_op": round(sum(msgs.values()) / max(ops, 1), 2),
        "messages_by_type": {k: round(v / max(ops, 1), 2) for k, v in sorted(msgs.items()) if v},
        "errors": counters["errors"],
        "error_kinds": kinds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--op", default="execute", choices=["execute", "transaction", "read", "stale"])
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-t", "--duration", type=float, default=5.0)
    p.add_argument("--on", default="leader", choices=["leader", "follower", "all"])
    p.add_argument("--lease-read", action="store_true")
    p.add_argument(
        "--inline", action="store_true", help="reads run on the event loop (as examples/kv's GET)"
    )
    p.add_argument("--dir", default=None, help="parent of the temporary state directory")
    p.add_argument(
        "--profile",
        choices=["tottime", "cumtime"],
        help="cProfile the event-loop thread over the measured window (printed on stderr)",
    )
    p.add_argument("--top", type=int, default=40, help="profile lines to print")
    args = p.parse_args()
    _count_hops()
    _count_messages()
    print(json.dumps(trio.run(run, args)))


if __name__ == "__main__":
    main()
