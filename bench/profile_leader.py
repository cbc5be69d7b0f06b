"""Profile the Raft leader of the benchmark cluster under load.

    python bench/profile_leader.py --mode write -c 16 -t 10 [--top 25] [--out DIR] [--member 2]
                                   [--all-members] [--gil]

Starts ``bench/microtrio_cluster.sh`` (three daemons; member1, the founding member, leads),
drives it with the shared load client (``/work/shared/bench/load.py``, http-kv adapter,
mutual TLS, every request to the leader, or spread over the three members as the anchors
run does with ``--all-members``) and samples the leader process with py-spy
(``pip install py-spy``; all threads, wall-clock including idle with ``--idle``) for the
measured window (``--member 2`` or ``3``: a follower instead). Prints the load client's result and the hottest frames: by own time and
by inclusive time (a function counted once per sample however deep it recurses). The raw
collapsed stacks stay in ``--out`` for flame graphs.

With ``--cprofile`` the members run under cProfile instead (event-loop thread only, exact
call counts) and the leader's statistics are printed sorted by own time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster  # noqa: E402

LOAD = Path(os.environ.get("LOAD_PY", "/work/shared/bench/load.py"))


def _start(
    args: argparse.Namespace, certs: Path, data: Path
) -> tuple[subprocess.Popen[bytes], list[int]]:
    env = {"PROFILE_DIR": str(args.out)} if args.cprofile else {}
    cluster, pids = _cluster.start(certs, data, args.base_port, **env)
    ctx = _cluster.context(certs)
    port = args.base_port + 1
    _cluster.wait_voters(port, ctx)
    deadline = time.monotonic() + 60
    while not _cluster.leads(port, ctx):
        if time.monotonic() > deadline or cluster.poll() is not None:
            _cluster.stop(cluster)
            sys.exit("the cluster did not come up with member1 leading")
        time.sleep(0.2)
    return cluster, pids


def _summary(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    out = [f"{total} samples"]
    for title, counter in (("own time", own), ("inclusive time", incl)):
        out.append(f"\n-- top {top} by {title} (% of samples) --")
        for frame, count in counter.most_common(top):
            out.append(f"{100 * count / max(total, 1):6.1f}%  {frame[:150]}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="write", choices=["write", "read", "mixed"])
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("-t", "--duration", type=float, default=10.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--base-port", type=int, default=24650)
    p.add_argument("--out", type=Path, default=None, help="directory for the raw profile")
    p.add_argument("--idle", action="store_true", help="py-spy: count idle (waiting) samples")
    p.add_argument("--cprofile", action="store_true", help="cProfile instead of py-spy")
    p.add_argument(
        "--gil",
        action="store_true",
        help="py-spy: only samples holding the GIL (interpreter work: no system calls, no "
        "waits for a CPU inside them)",
    )
    p.add_argument(
        "--native", action="store_true", help="py-spy: C frames too (pauses the process)"
    )
    p.add_argument("--member", type=int, default=1, choices=[1, 2, 3], help="1 leads")
    p.add_argument(
        "--all-members", action="store_true", help="workers on all three members (as anchors)"
    )
    args = p.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="microtrio-profile."))
    args.out.mkdir(parents=True, exist_ok=True)
    certs = Path(os.environ.get("CERTS", "/tmp/microtrio-profile-pki"))
    data = Path(tempfile.mkdtemp(prefix="microtrio-profile-data."))
    cluster, pids = _start(args, certs, data)
    raw = args.out / f"member{args.member}.collapsed"
    spy = None
    try:
        tls = _cluster.client_tls(certs)
        urls = _cluster.load_urls(args.base_port + 1, args.all_members)
        load = subprocess.Popen(
            [sys.executable, str(LOAD), "--system", "http-kv", "--path-template",
             "/1.0/kv/{key}", "--urls", urls,
             "--mode", args.mode, "-c", str(args.concurrency), "-t", str(args.duration),
             "--warmup", "1", "--label", "profile", *tls],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        if not args.cprofile:
            time.sleep(1.5)  # prefill and warm-up (py-spy samples the measured window)
            pid, seconds = pids[args.member - 1], int(args.duration) - 1
            cmd = ["py-spy", "record", "-p", str(pid), "-d", str(seconds)]
            cmd += ["-f", "raw", "-o", str(raw), "--threads", "-r", "200"]
            cmd.append("--native" if args.native else "--nonblocking")
            if args.gil:
                cmd.append("--gil")
            if args.idle:
                cmd.append("--idle")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result, _ = load.communicate(timeout=args.duration + 180)
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        _cluster.stop(cluster)
        shutil.rmtree(data, ignore_errors=True)
    report = json.loads(result)
    keys = ("mode", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "errors", "servers_cpu_pct")
    print(json.dumps({k: report.get(k) for k in keys}))
    if args.cprofile:
        import pstats

        stats = pstats.Stats(str(args.out / f"member{args.member}.prof"))
        stats.sort_stats("tottime").print_stats(args.top)
    else:
        print(_summary(raw, args.top))
        print(f"raw stacks: {raw}")


if __name__ == "__main__":
    main()
