"""The HTTP path's cost per request: the kv example's routes through Quart or fast.

    python bench/http_paths.py [--seconds 5] [-c 16] [--rounds 2] [--variants quart,asgi,fast]

One single-member kv daemon per variant (a separate process, mutual TLS on 127.0.0.1),
driven by the shared load client: ``GET /1.0/kv/{key}?stale=1`` (a local read: little
besides HTTP, TLS and one SQLite lookup) and ``PUT`` (a replicated write on one member:
adds the write path). Variants:

* ``quart``: the kv actions through Quart (``fast=False``), on hypercorn;
* ``asgi``: the actions fast, but every request still through hypercorn + h11 + the ASGI
  dispatcher (the listener's direct HTTP/1.1 path switched off: how fast endpoints were
  served before it);
* ``fast``: as the example ships: fast actions answered by the listener's direct
  HTTP/1.1 path.

Variants alternate, round after round; prints one JSON line per run and the server CPU per
request.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
LOAD = Path(os.environ.get("LOAD_PY", "/work/shared/bench/load.py"))


def _kv_args(fast: bool) -> object:
    from examples.kv import service

    resources = []
    for res in service.KV_SERVER.resources:
        endpoints = []
        for ep in res.endpoints:
            changes = {m: dataclasses.replace(getattr(ep, m), fast=fast) for m in ("get", "put")}
            endpoints.append(dataclasses.replace(ep, **changes))
        resources.append(dataclasses.replace(res, endpoints=endpoints))
    server = dataclasses.replace(service.KV_SERVER, resources=resources)
    return dataclasses.replace(service.daemon_args(), servers={"kv": server})


def serve(state_dir: Path, fast: bool, direct: bool) -> None:
    """Child process: run one member until SIGTERM; print its address once bootstrapped."""
    import trio

    import microtrio

    if not direct:  # the 'asgi' variant: the listener never finds the direct path
        from microtrio._api import _listener

        _listener._direct_app = lambda app: None

    async def main() -> None:
        app = microtrio.App(state_dir, args=_kv_args(fast))  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await app.new_cluster("member1", "127.0.0.1:0")
            print((await app.status())["address"], flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    await app.shutdown()
                    break
            nursery.cancel_scope.cancel()

    trio.run(main)


VARIANTS = {"quart": [], "asgi": ["--fast", "--no-direct"], "fast": ["--fast"]}


def measure(variant: str, mode: str, path: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="microtrio-http.") as tmp:
        state = Path(tmp) / "member1"
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(state), *VARIANTS[variant]],
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            address = child.stdout.readline().decode().strip()
            tls = ["--cacert", str(state / "cluster.crt"), "--cert", str(state / "server.crt")]
            tls += ["--key", str(state / "server.key")]
            out = subprocess.run(
                [sys.executable, str(LOAD), "--system", "http-kv", "--path-template", path,
                 "--urls", f"https://{address}", "--mode", mode, "-c", str(args.concurrency),
                 "-t", str(args.seconds), "--warmup", "1", "--keys", "100",
                 "--watch-pids", str(child.pid), "--label", variant, *tls],
                capture_output=True, check=True, timeout=args.seconds + 120,
            )  # fmt: skip
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
    result: dict[str, object] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    ops = float(result["ops_per_s"])  # type: ignore[arg-type]
    cpu = float(result.get("servers_cpu_pct") or 0.0)  # type: ignore[arg-type]
    keys = ("label", "mode", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "errors")
    summary = {k: result.get(k) for k in keys}
    summary["path"] = path
    summary["server_cpu_pct"] = cpu
    summary["server_cpu_ms_per_op"] = round(10 * cpu / ops, 3) if ops else None
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="read,write", help="read (stale GET), write (PUT)")
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--variants", default="quart,asgi,fast", help=", ".join(VARIANTS))
    p.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-direct", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        serve(args.serve, args.fast, not args.no_direct)
        return
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            path = "/1.0/kv/{key}?stale=1" if mode == "read" else "/1.0/kv/{key}"
            for variant in args.variants.split(","):
                print(json.dumps(measure(variant, mode, path, args)), flush=True)


if __name__ == "__main__":
    main()
