"""Failover time of the benchmark cluster: leader ``kill -9`` -> first successful write.

    python bench/failover.py [--trials 5] [--base-port 24850]

Each trial starts a fresh 3-member cluster (``bench/microtrio_cluster.sh``: three
``python -m examples.kv daemon`` processes, bootstrapped and joined with tokens, mutual TLS),
waits for three voters, a leader and a successful write, then sends SIGKILL to the leader's process and immediately starts writing
(``PUT /1.0/kv/failover-<n>``) to both survivors from one thread each, a request after the
other (each with its own deadline). The failover time is from the kill to the first ``200``
of a request that was sent after the kill. Prints one JSON line per trial and a summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster  # noqa: E402


def _put(conn: http.client.HTTPSConnection, key: str) -> int:
    conn.request("PUT", f"/1.0/kv/{key}", body=b"v" * 128)
    reply = conn.getresponse()
    reply.read()
    return reply.status


def _first_success(ports: list[int], ctx: ssl.SSLContext, timeout: float) -> float | None:
    """Write to every port from its own thread until one write succeeds: the monotonic time
    of that success, or None after ``timeout``."""
    done = threading.Event()
    found: list[float] = []
    deadline = time.monotonic() + timeout

    def worker(port: int) -> None:
        n = 0
        conn: http.client.HTTPSConnection | None = None
        while not done.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
                status = _put(conn, f"failover-{port}-{n}")
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.005)
                continue
            if status == 200:
                found.append(time.monotonic())
                done.set()
            else:
                time.sleep(0.005)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(p,), daemon=True) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return min(found) if found else None


def trial(n: int, args: argparse.Namespace, certs: Path) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="microtrio-failover."))
    cluster, pids = _cluster.start(certs, data, args.base_port)
    try:
        ctx = _cluster.context(certs)
        ports = [args.base_port + k for k in (1, 2, 3)]
        _cluster.wait_voters(ports[0], ctx)
        deadline = time.monotonic() + 60
        leader = None
        while leader is None:
            if time.monotonic() > deadline:
                raise SystemExit("no leader within 60 s")
            leader = next((k for k, p in enumerate(ports) if _cluster.leads(p, ctx)), None)
            time.sleep(0.1)
        if _first_success([ports[leader]], ctx, 30) is None:
            raise SystemExit("the cluster does not take writes")
        time.sleep(args.settle)  # steady state: heartbeats flowing, followers caught up
        survivors = [p for k, p in enumerate(ports) if k != leader]
        killed = time.monotonic()
        os.kill(pids[leader], signal.SIGKILL)
        success = _first_success(survivors, ctx, args.timeout)
        new_leader = next((p for p in survivors if _cluster.leads(p, ctx)), None)
        result: dict[str, object] = {
            "trial": n,
            "killed_member": f"member{leader + 1}",
            "failover_s": None if success is None else round(success - killed, 3),
            "new_leader_port": new_leader,
        }
        print(json.dumps(result), flush=True)
        return result
    finally:
        _cluster.stop(cluster)
        if not os.environ.get("KEEP"):
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"kept {data}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--base-port", type=int, default=24850)
    p.add_argument("--settle", type=float, default=1.0, help="seconds of steady state first")
    p.add_argument("--timeout", type=float, default=30.0, help="give up a trial after this")
    args = p.parse_args()
    certs = Path(os.environ.get("CERTS", "/tmp/microtrio-failover-pki"))
    results = [trial(n, args, certs) for n in range(1, args.trials + 1)]
    times = [float(r["failover_s"]) for r in results if isinstance(r["failover_s"], float)]
    summary = {
        "trials": len(results),
        "failed": len(results) - len(times),
        "min_s": min(times, default=None),
        "median_s": statistics.median(times) if times else None,
        "max_s": max(times, default=None),
    }
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
