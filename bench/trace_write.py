"""Where a write's time goes across the three daemon processes of the benchmark cluster.

    python bench/trace_write.py [--mode write] [-c 1] [-t 8] [--base-port 24850]

Starts ``bench/microtrio_cluster.sh`` with ``bench/_trace`` on ``PYTHONPATH`` and
``MICROTRIO_TRACE_DIR`` set: every daemon stamps the stages of the write path with
``time.monotonic()`` (one clock for all processes; see ``_trace/_trace_hooks.py``, which
patches the library at import, nothing in it changes) and writes them out when stopped.
The shared load client then drives the leader (member1) with the http-kv adapter, as
``profile_leader.py`` does. For every request the leader answered in the measured window
(from its ``http head`` to its ``http send<``) and every stage of every member, the first
time that stage happened inside the window is taken relative to the request's arrival;
prints the median and p90 offset per stage (sorted by median) and how many requests saw it.
``L`` is the leader, ``F1``/``F2`` the followers. The stamps cost a few microseconds each,
so absolute figures are a little higher than an untraced run. ``KEEP_TRACE=1`` keeps the
raw stamps (one file per process, ``TIME STAGE`` lines) and prints where they are, to
follow single requests. ``TRACE_URLS`` replaces the load client's ``--urls`` (e.g. all three
members, ``https://127.0.0.1:24851,...:24852,...:24853`` with the default base port).

``--cpu`` stamps the CPU time of each daemon's event-loop thread instead
(``time.thread_time``) and reports the leader alone: its CPU from a request's head to its
answer (median), and where the loop's CPU went over the middle half of the requests,
summed per pair of consecutive stamps and divided by the requests (work between two
stamps belongs to whatever task ran then, not only to the request).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cluster  # noqa: E402

LOAD = Path(os.environ.get("LOAD_PY", "/work/shared/bench/load.py"))


def _read(path: Path) -> list[tuple[float, str]]:
    events = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        t, _, stage = line.partition(" ")
        events.append((float(t), stage))
    return events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="write", choices=["write", "read"])
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-t", "--duration", type=float, default=8.0)
    p.add_argument("--base-port", type=int, default=24850)
    p.add_argument("--cpu", action="store_true", help="the leader's CPU time between stamps")
    p.add_argument("--top", type=int, default=30, help="pairs of stamps listed with --cpu")
    args = p.parse_args()
    certs = Path(os.environ.get("CERTS", "/tmp/microtrio-trace-pki"))
    data = Path(tempfile.mkdtemp(prefix="microtrio-trace-data."))
    traces = Path(tempfile.mkdtemp(prefix="microtrio-trace."))
    pythonpath = os.pathsep.join(filter(None, [str(HERE / "_trace"), os.environ.get("PYTHONPATH")]))
    env = {"MICROTRIO_TRACE_DIR": str(traces), "PYTHONPATH": pythonpath}
    if args.cpu:
        env["MICROTRIO_TRACE_CPU"] = "1"
    cluster, pids = _cluster.start(certs, data, args.base_port, **env)
    try:
        ctx = _cluster.context(certs)
        port = args.base_port + 1
        _cluster.wait_member1_leads(port, ctx)
        tls = _cluster.client_tls(certs)
        urls = os.environ.get("TRACE_URLS") or f"https://127.0.0.1:{port}"
        window_start = time.monotonic() + 1.5
        out = subprocess.run(
            [sys.executable, str(LOAD), "--system", "http-kv", "--path-template",
             "/1.0/kv/{key}", "--urls", urls, "--mode", args.mode,
             "-c", str(args.concurrency), "-t", str(args.duration), "--warmup", "1",
             "--label", "trace", *tls],
            stdout=subprocess.PIPE, check=True, timeout=args.duration + 180,
        ).stdout  # fmt: skip
        window_end = time.monotonic() - 0.2
    finally:
        _cluster.stop(cluster)
        shutil.rmtree(data, ignore_errors=True)
    report = json.loads(out)
    print(json.dumps({k: report.get(k) for k in ("mode", "concurrency", "ops_per_s", "p50_ms")}))
    names = {pids[0]: "L", pids[1]: "F1", pids[2]: "F2"}
    per: dict[str, list[tuple[float, str]]] = {}
    for name_pid, name in names.items():
        path = traces / f"{name_pid}.trace"
        if not path.exists():
            sys.exit(f"no trace from {name} (pid {name_pid}) in {traces}")
        per[name] = _read(path)
    leader = per["L"]
    if args.cpu:
        _cpu_report(leader, args.top)
        _done(traces)
        return
    requests = _answered(
        leader,
        [
            i
            for i, (t, stage) in enumerate(leader)
            if stage == "http head" and window_start <= t <= window_end
        ],
    )
    if not requests:
        sys.exit("no requests traced")
    offsets: dict[str, list[float]] = {}
    for name, events in per.items():
        times = [t for t, _ in events]
        for start, end in requests:
            seen: set[str] = set()
            for k in range(bisect.bisect_left(times, start), bisect.bisect_right(times, end)):
                stage = f"{name}:{events[k][1]}"
                if stage not in seen:
                    seen.add(stage)
                    offsets.setdefault(stage, []).append(events[k][0] - start)
    rows = []
    for stage, values in offsets.items():
        if len(values) < len(requests) // 4:
            continue
        values.sort()
        rows.append((statistics.median(values), values[int(len(values) * 0.9)], len(values), stage))
    rows.sort()
    print(f"{len(requests)} requests; offsets from the leader's http head, microseconds")
    print(f"{'stage':32s} {'p50':>7s} {'p90':>7s} {'seen':>6s}")
    for med, p90, count, stage in rows:
        print(f"{stage:32s} {med * 1e6:7.0f} {p90 * 1e6:7.0f} {count:6d}")
    _done(traces)


def _done(traces: Path) -> None:
    if not os.environ.get("KEEP_TRACE"):
        shutil.rmtree(traces, ignore_errors=True)
    else:
        print("traces kept in", traces)


def _answered(leader: list[tuple[float, str]], heads: list[int]) -> list[tuple[float, float]]:
    """(head, answer) stamp times of the requests whose ``http head`` is at ``heads``
    (indexes into ``leader``), for those the leader answered."""
    requests = []
    for i in heads:
        for k in range(i + 1, len(leader)):
            if leader[k][1] == "http send<":
                requests.append((leader[i][0], leader[k][0]))
                break
    return requests


def _cpu_report(leader: list[tuple[float, str]], top: int) -> None:
    """The leader's event-loop CPU (``--cpu`` stamps) over the middle half of its requests."""
    heads = [i for i, (_, stage) in enumerate(leader) if stage == "http head"]
    if len(heads) < 8:
        sys.exit("too few requests traced")
    middle = heads[len(heads) // 4 : 3 * len(heads) // 4]
    span = leader[middle[0] : heads[3 * len(heads) // 4]]
    count = len(middle)  # the heads in ``span``
    answer = [end - start for start, end in _answered(leader, middle)]
    pairs: dict[tuple[str, str], list[float]] = {}
    for (t0, a), (t1, b) in zip(span, span[1:], strict=False):
        pairs.setdefault((a, b), []).append(t1 - t0)
    total = span[-1][0] - span[0][0]
    print(
        f"leader, {count} requests: {total / count * 1e6:.0f} us of event-loop CPU per request; "
        f"{statistics.median(answer) * 1e6:.0f} us (median) from a head to its answer"
    )
    rows = sorted(((sum(v), len(v), a, b) for (a, b), v in pairs.items()), reverse=True)
    print(f"{'us/request':>10s} {'times':>6s} {'us each':>8s}  from -> to")
    for spent, times, a, b in rows[:top]:
        print(f"{spent / count * 1e6:10.0f} {times:6d} {spent / times * 1e6:8.0f}  {a} -> {b}")


if __name__ == "__main__":
    main()
