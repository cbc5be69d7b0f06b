"""Start and query the benchmark cluster (``bench/microtrio_cluster.sh``) from Python.

Shared by ``failover.py``, ``profile_leader.py`` and ``cpu_split.py`` (``hop_floor.py``
takes :func:`cpu_seconds` only): the script starts three
``python -m examples.kv daemon`` processes, forms the cluster with ``init --bootstrap`` and
join tokens, and publishes the client credentials into ``CERTS`` (see the script).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start(
    certs: Path, data: Path, base_port: int, *, timeout: float = 120.0, **env: str
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start the cluster; return the script's process and the members' PIDs (member1
    first) once the script says the cluster is formed."""
    environ = dict(os.environ, CERTS=str(certs), DATA=str(data), BASE_PORT=str(base_port))
    environ.update(env)
    cluster = subprocess.Popen(
        ["bash", str(HERE / "microtrio_cluster.sh")], env=environ, stderr=subprocess.PIPE
    )
    assert cluster.stderr is not None
    pids: list[int] = []
    deadline = time.monotonic() + timeout
    for raw in cluster.stderr:
        line = raw.decode(errors="replace")
        if line.startswith("microtrio members:"):
            pids = [int(p) for p in line.split(":", 1)[1].split("(")[0].split()]
        elif line.startswith("microtrio cluster formed"):
            return cluster, pids
        if time.monotonic() > deadline:
            break
    stop(cluster)
    raise SystemExit(f"the benchmark cluster did not form (logs in {data})")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def stop(cluster: subprocess.Popen[bytes]) -> None:
    cluster.send_signal(signal.SIGTERM)
    cluster.wait(timeout=60)


def context(certs: Path) -> ssl.SSLContext:
    """TLS for the load: the cluster certificate as CA, member1's certificate as client."""
    ctx = ssl.create_default_context(cafile=str(certs / "cluster.crt"))
    ctx.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    return ctx


def _get(port: int, path: str, ctx: ssl.SSLContext) -> bytes | None:
    try:
        url = f"https://127.0.0.1:{port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=2) as reply:
            return bytes(reply.read()) if reply.status == 200 else None
    except OSError:
        return None


def leads(port: int, ctx: ssl.SSLContext) -> bool:
    """The member on ``port`` is the Raft leader (its metrics say so)."""
    body = _get(port, "/core/1.0/metrics", ctx)
    return body is not None and b"\nmicrotrio_raft_leader 1\n" in body


def voters(port: int, ctx: ssl.SSLContext) -> int:
    """How many voters ``GET /core/1.0/cluster`` on ``port`` lists (0 if it fails)."""
    body = _get(port, "/core/1.0/cluster", ctx)
    if body is None:
        return 0
    return sum(1 for m in json.loads(body)["metadata"] if m.get("role") == "voter")


def wait_voters(port: int, ctx: ssl.SSLContext, count: int = 3, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while voters(port, ctx) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} voters after {timeout:g} s")
        time.sleep(0.2)


def wait_member1_leads(port: int, ctx: ssl.SSLContext, timeout: float = 60.0) -> None:
    """Wait for three voters, then until the member on ``port`` (member1) leads."""
    wait_voters(port, ctx)
    deadline = time.monotonic() + timeout
    while not leads(port, ctx):
        if time.monotonic() > deadline:
            raise SystemExit("member1 did not lead")
        time.sleep(0.2)


def load_urls(port: int, all_members: bool) -> str:
    """The shared load client's ``--urls``: member1 (at ``port``), or all three members."""
    return ",".join(f"https://127.0.0.1:{port + i}" for i in range(3 if all_members else 1))


def client_tls(certs: Path) -> list[str]:
    """The shared load client's TLS arguments for the certificates in ``certs``."""
    return [
        "--cacert", str(certs / "cluster.crt"),
        "--cert", str(certs / "client.crt"),
        "--key", str(certs / "client.key"),
    ]  # fmt: skip
