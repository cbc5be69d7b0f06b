"""A long fault-injection campaign: runs of real kv daemons under a seeded nemesis.

    python bench/jepsen.py --minutes 30 --members 3,5 --run-duration 60 --results results/jepsen

Each run starts a fresh cluster of daemons (the sizes in ``--members`` take turns;
bootstrapped and joined with tokens; in network namespaces when root unless
``--network faults``), drives the chosen
workloads while the nemesis inflicts the chosen faults, checks the history and writes its
report (``history.jsonl``, ``verdict.json``, ``latency.png``, ``schedule.txt``, member logs)
to ``RESULTS/run-<N>m-<seed>``. Seeds: ``--seed`` for the first run, then derived from it
(all printed, and in ``RESULTS/summary.json``). Replay one run with ``--runs 1 --seed S``
and the same parameters. The exit status is 1 if any run was invalid, 2 if any was unknown,
3 if all were valid but a member process exited by itself (a crash: see its log).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from microtrio.testing._campaign import CampaignConfig, run_campaign  # noqa: E402
from microtrio.testing._nemesis import ALL_FAULTS, FaultKind  # noqa: E402
from microtrio.testing._report import Validity  # noqa: E402
from microtrio.testing._workloads import WORKLOADS  # noqa: E402


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="stop starting runs after this")
    p.add_argument("--runs", type=int, default=0, help="at most this many runs (0: no limit)")
    p.add_argument("--members", default="3,5", help="cluster sizes, taking turns")
    p.add_argument("--run-duration", type=float, default=60.0, help="seconds of load per run")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--faults", default=",".join(f.value for f in ALL_FAULTS))
    p.add_argument("--fault-time", default="2,6", help="min,max seconds a fault lasts")
    p.add_argument("--quiet-time", default="1,4", help="min,max seconds between faults")
    p.add_argument("--seed", type=int, help="the first run's seed (default: random)")
    p.add_argument("--results", type=Path, default=Path("results/jepsen"))
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument("--network", default="auto", choices=["auto", "netns", "faults"],
                   help="partitions from namespaces (root) or the Raft transport")  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=1.0, help="the daemons' heartbeat (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _pair(text: str) -> tuple[float, float]:
    low, high = (float(x) for x in text.split(","))
    return low, high


async def main(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.members.split(",")]
    faults = tuple(FaultKind(f) for f in args.faults.split(",") if f)
    workloads = tuple(w for w in args.workloads.split(",") if w)
    seeds = random.Random(args.seed if args.seed is not None else time.time_ns())
    first = args.seed
    args.results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: list[dict[str, object]] = []
    worst = Validity.VALID
    crashed = False
    n = 0
    while time.monotonic() - started < args.minutes * 60 and (not args.runs or n < args.runs):
        seed = first if n == 0 and first is not None else seeds.randrange(2**32)
        config = CampaignConfig(
            results=args.results, members=sizes[n % len(sizes)], duration=args.run_duration,
            workloads=workloads, faults=faults, seed=seed, fault_time=_pair(args.fault_time),
            quiet_time=_pair(args.quiet_time), request_timeout=args.request_timeout,
            network=args.network, heartbeat=args.heartbeat,
        )  # fmt: skip
        result = await run_campaign(config)
        verdict = json.loads((result.folder / "verdict.json").read_text())
        line = {
            "run": n, "seed": seed, "members": config.members, "validity": result.validity.value,
            "folder": str(result.folder), "operations": verdict["summary"]["operations"],
            "faults": [f["fault"] for f in verdict["faults"]], "crashes": result.crashes,
            "network": result.network, "error": result.error,
            "checkers": {r.checker: r.validity.value for r in result.results},
        }  # fmt: skip
        print(json.dumps(line), flush=True)
        summary.append(line)
        crashed = crashed or bool(result.crashes)
        if result.validity is Validity.INVALID:
            worst = Validity.INVALID
        elif result.validity is Validity.UNKNOWN and worst is Validity.VALID:
            worst = Validity.UNKNOWN
        (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        n += 1
    minutes = (time.monotonic() - started) / 60
    print(f"{n} runs in {minutes:.1f} min: {worst.value}, crashes: {crashed}", flush=True)
    status = {Validity.VALID: 0, Validity.INVALID: 1, Validity.UNKNOWN: 2}[worst]
    return 3 if status == 0 and crashed else status


if __name__ == "__main__":
    arguments = _parse(sys.argv[1:])
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    sys.exit(trio.run(main, arguments))
