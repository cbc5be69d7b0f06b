"""Writes per window under a fixed delay on every Raft link, on three real kv daemons.

    python bench/jepsen_delay.py 0 0.02 0.05 0.1

For each delay (seconds, one way, set in every daemon's ``DaemonArgs.faults`` through the
campaign endpoint of ``microtrio.testing._kvdaemon``), PUTs to the leader for ``--window``
seconds, one at a time; prints the acknowledged and failed count and the last latency.
A delay well under the election timeout (0.5 s) should only slow writes down.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from microtrio._errors import MicrotrioError  # noqa: E402
from microtrio.testing._campaign import DaemonExecutor  # noqa: E402
from microtrio.testing._daemons import DaemonCluster  # noqa: E402
from microtrio.testing._workloads import CampaignClient  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="jepsen-delay-"))
    names = ["member1", "member2", "member3"]
    async with trio.open_nursery() as nursery:
        cluster = DaemonCluster(root, names, nursery=nursery)
        client = CampaignClient(timeout=10, route=cluster.route)
        ex = DaemonExecutor(cluster, client)
        try:
            await cluster.form()
            for delay in args.delays:
                await ex.degrade(delay=delay, drop=0.0)
                ok = failed = 0
                last = 0.0
                end = trio.current_time() + args.window
                while trio.current_time() < end:
                    leader = await ex.leader() or names[0]
                    start = trio.current_time()
                    try:
                        await client.put(cluster[leader].address, "k", b"1")
                        ok += 1
                    except MicrotrioError:
                        failed += 1
                    last = trio.current_time() - start
                print(
                    f"delay {delay:.3f} s: {ok} ok, {failed} failed, last {last:.3f} s", flush=True
                )
                await ex.heal()
        finally:
            await cluster.aclose()
            await client.aclose()
    print(f"member logs: {root}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("delays", nargs="+", type=float)
    p.add_argument("--window", type=float, default=8.0)
    trio.run(main, p.parse_args())
