"""Each member's CPU and context switches per operation under load, on the benchmark cluster.

    python bench/cpu_split.py [--mode write|read] [-c 1] [-t 8] [--all-members]
                              [--path-template /1.0/kv/{key}] [--base-port 24750]

Starts ``bench/microtrio_cluster.sh`` (three ``python -m examples.kv daemon`` processes of
THIS checkout; member1 leads), drives it with the shared load client
(``/work/shared/bench/load.py``, http-kv adapter, mutual TLS; every worker on member1, or
spread over the three with ``--all-members``) and reads ``/proc`` of each member over the
middle of the run: CPU (user + system, all threads; and each apart) per operation, and
voluntary plus involuntary context switches of the main thread per operation. Prints the
load client's p50, p99 and maximum latency. Run it on two checkouts
alternately to compare commits; expect about 10 % noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cluster  # noqa: E402

LOAD = Path(os.environ.get("LOAD_PY", "/work/shared/bench/load.py"))


def _switches(pid: int) -> tuple[int, int]:
    counts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if "ctxt_switches" in line:
            key, value = line.split(":")
            counts[key] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="write", choices=["write", "read"])
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-t", "--duration", type=float, default=8.0)
    p.add_argument("--all-members", action="store_true", help="workers on all three members")
    p.add_argument("--path-template", default="/1.0/kv/{key}")
    p.add_argument("--base-port", type=int, default=24750)
    args = p.parse_args()
    certs = Path(os.environ.get("CERTS", "/tmp/microtrio-cpu-split-pki"))
    data = Path(tempfile.mkdtemp(prefix="microtrio-cpu-split."))
    cluster, pids = _cluster.start(certs, data, args.base_port)
    try:
        ctx = _cluster.context(certs)
        port = args.base_port + 1
        _cluster.wait_member1_leads(port, ctx)
        urls = _cluster.load_urls(port, args.all_members)
        tls = _cluster.client_tls(certs)
        load = subprocess.Popen(
            [sys.executable, str(LOAD), "--system", "http-kv", "--path-template",
             args.path_template, "--urls", urls, "--mode", args.mode,
             "-c", str(args.concurrency), "-t", str(args.duration), "--warmup", "1",
             "--label", "cpu-split", *tls],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        window = max(args.duration - 2.0, 1.0)
        time.sleep(2.0)  # prefill and warm-up
        t0, cpu0, sw0 = (
            time.monotonic(),
            [_cluster.cpu_seconds(p) for p in pids],
            [_switches(p) for p in pids],
        )
        time.sleep(window)
        t1, cpu1, sw1 = (
            time.monotonic(),
            [_cluster.cpu_seconds(p) for p in pids],
            [_switches(p) for p in pids],
        )
        out, _ = load.communicate(timeout=args.duration + 180)
    finally:
        _cluster.stop(cluster)
        shutil.rmtree(data, ignore_errors=True)
    report = json.loads(out)
    ops = report["ops_per_s"]
    print(
        f"{args.mode} c={args.concurrency}: {ops} ops/s, p50 {report['p50_ms']} ms, "
        f"p99 {report['p99_ms']} ms, max {report.get('max_ms')} ms"
    )
    if not ops:
        sys.exit("no operations completed")
    span = t1 - t0
    for i in range(len(pids)):
        user = (cpu1[i][0] - cpu0[i][0]) / span
        system = (cpu1[i][1] - cpu0[i][1]) / span
        cpu = user + system
        vol = (sw1[i][0] - sw0[i][0]) / span / ops
        invol = (sw1[i][1] - sw0[i][1]) / span / ops
        print(
            f"member{i + 1}: CPU {cpu * 100:5.1f} % of a core, {cpu / ops * 1e3:.3f} ms per op "
            f"({user / ops * 1e3:.3f} user, {system / ops * 1e3:.3f} system), "
            f"context switches per op {vol + invol:.1f} ({invol:.2f} involuntary)"
        )


if __name__ == "__main__":
    main()
