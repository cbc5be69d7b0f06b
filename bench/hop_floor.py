"""The floor for one-client writes on this machine: the write path's hops with nothing else.

    python bench/hop_floor.py [-t 10] [--no-tls] [--sync inline|thread|ring]

Three processes on 127.0.0.1 do only what a replicated write cannot avoid, in Python on
trio, as microtrio runs: the leader takes an HTTP/1.1 request from the shared load client
(``/work/shared/bench/load.py``, http-kv adapter, one worker, keep-alive, mutual TLS as in
the anchors runs), sends the body to both followers over mutual TLS (microtrio's
``TLSStream``), appends it to its own file with ``fdatasync``, waits for the first follower
to say it appended and synced its copy, and answers ``200``. No Raft, no SQLite, no
routing, no JSON. Whatever microtrio does beyond this is on top of the figure printed here,
so a one-client target above it cannot be met by any implementation with this shape (four
processes, two cores, Python).

``--sync thread`` does the append and ``fdatasync`` in a worker thread (the event loop
stays free) instead of inline, ``--sync ring`` through microtrio's io_uring (one
``RWF_DSYNC`` write, as its log store does); ``--no-tls`` drops TLS on every hop. The certificate is a
fresh self-signed ECDSA P-384 one (``openssl req``), presented and pinned on every hop.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
import _cluster  # noqa: E402

from microtrio._replication._uring import open_ring  # noqa: E402
from microtrio._tls import TLSStream  # noqa: E402

LOAD = Path(os.environ.get("LOAD_PY", "/work/shared/bench/load.py"))
_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


def _make_cert(work: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (ECDSA P-384, like a member's): every hop
    presents it and pins it."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
         "-nodes", "-keyout", str(work / "node.key"), "-out", str(work / "node.crt"),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip


def _contexts(work: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(work / "node.crt", work / "node.key")
    server.load_verify_locations(work / "node.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_cert_chain(work / "node.crt", work / "node.key")
    client.load_verify_locations(work / "node.crt")
    client.check_hostname = False
    return server, client


class _Log:
    def __init__(self, path: Path, mode: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._mode = mode
        self._ring = open_ring(enabled=True) if mode == "ring" else None

    def _append(self, data: bytes) -> None:
        os.write(self._fd, data)
        os.fdatasync(self._fd)

    async def append(self, data: bytes) -> None:
        if self._ring is not None:
            await self._ring.write(self._fd, data, 0)  # O_APPEND: the offset is ignored
        elif self._mode == "inline":
            self._append(data)
        else:
            await trio.to_thread.run_sync(self._append, data)


async def _read_frame(stream: trio.abc.Stream, buf: bytearray) -> bytes | None:
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        chunk = await stream.receive_some()
        if not chunk:
            return None
        buf += chunk
    n = int.from_bytes(buf[:4], "big")
    frame = bytes(buf[4 : 4 + n])
    del buf[: 4 + n]
    return frame


async def follower(args: argparse.Namespace) -> None:
    log = _Log(Path(args.dir) / f"follower-{os.getpid()}.log", args.sync)
    server_ctx = _contexts(Path(args.dir))[0] if args.tls else None
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)

    async def serve(stream: trio.SocketStream) -> None:
        s: trio.abc.Stream = (
            TLSStream(stream, server_ctx, server_side=True) if server_ctx else stream
        )
        buf = bytearray()
        while (frame := await _read_frame(s, buf)) is not None:
            await log.append(frame)
            await s.send_all(frame[:8])  # the sequence number: "appended"

    await trio.serve_listeners(serve, listeners)


async def leader(args: argparse.Namespace) -> None:
    log = _Log(Path(args.dir) / "leader.log", args.sync)
    server_ctx, client_ctx = _contexts(Path(args.dir)) if args.tls else (None, None)
    peers: list[trio.abc.Stream] = []
    for port in args.peers:
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        peer: trio.abc.Stream = sock
        if client_ctx is not None:
            peer = TLSStream(sock, client_ctx, server_hostname="127.0.0.1")
            await peer.do_handshake()
        peers.append(peer)
    acked = 0
    waiting: dict[int, trio.Event] = {}

    async def acks(peer: trio.abc.Stream) -> None:
        nonlocal acked
        buf = bytearray()
        while True:
            chunk = await peer.receive_some()
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                seq = int.from_bytes(buf[:8], "big")
                del buf[:8]
                if seq > acked:
                    acked = seq
                    event = waiting.pop(seq, None)
                    if event is not None:
                        event.set()

    seq = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal seq
        s: trio.abc.Stream = (
            TLSStream(stream, server_ctx, server_side=True) if server_ctx else stream
        )
        buf = bytearray()
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                chunk = await s.receive_some()
                if not chunk:
                    return
                buf += chunk
            head = bytes(buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(buf) < end + 4 + length:
                chunk = await s.receive_some()
                if not chunk:
                    return
                buf += chunk
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            if head.startswith(b"put"):
                seq += 1
                mine = seq
                frame = mine.to_bytes(8, "big") + body
                framed = len(frame).to_bytes(4, "big") + frame
                done = waiting[mine] = trio.Event()
                for peer in peers:
                    await peer.send_all(framed)
                await log.append(frame)
                if acked < mine:
                    await done.wait()
                waiting.pop(mine, None)
            await s.send_all(_OK)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(acks, peer)
        nursery.start_soon(trio.serve_listeners, serve, listeners)


def run(args: argparse.Namespace) -> None:
    me = [sys.executable, __file__, "--sync", args.sync]
    if not args.tls:
        me.append("--no-tls")
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_BASE", "/tmp")) as work:
        _make_cert(Path(work))
        try:
            ports = []
            for _ in range(2):
                p = subprocess.Popen(
                    [*me, "--dir", work, "follower"], stdout=subprocess.PIPE, text=True
                )
                procs.append(p)
                assert p.stdout is not None
                ports.append(p.stdout.readline().strip())
            p = subprocess.Popen(
                [*me, "--dir", work, "leader", "--peers", *ports], stdout=subprocess.PIPE, text=True
            )
            procs.append(p)
            assert p.stdout is not None
            port = p.stdout.readline().strip()
            if not port:
                sys.exit("the leader did not start")
            scheme = "https" if args.tls else "http"
            cmd = [
                sys.executable, str(LOAD), "--system", "http-kv",
                "--urls", f"{scheme}://127.0.0.1:{port}", "--mode", "write", "-c", "1",
                "-t", str(args.t), "--warmup", "1", "--path-template", "/1.0/kv/{key}",
                "--label", f"hop-floor-{'tls' if args.tls else 'plain'}-{args.sync}",
            ]  # fmt: skip
            if args.tls:
                c = f"{work}/node"
                cmd += ["--cacert", f"{c}.crt", "--cert", f"{c}.crt", "--key", f"{c}.key"]
            before = [sum(_cluster.cpu_seconds(p.pid)) for p in procs]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.t + 120)
            used = [
                sum(_cluster.cpu_seconds(p.pid)) - b for p, b in zip(procs, before, strict=True)
            ]
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr
            try:
                d = json.loads(line)
                keep = ("label", "mode", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "errors")
                result = {k: d.get(k) for k in keep}
                ops = d["ops_per_s"] * (args.t + 1)  # the warm-up second is in the CPU figures
                # CPU per write, ms (user + system): leader, follower, follower
                result["cpu_ms_per_op"] = [round(1000 * used[i] / ops, 3) for i in (2, 0, 1)]
                print(json.dumps(result))
            except json.JSONDecodeError:
                sys.exit(f"load client failed: {line}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-t", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--no-tls", dest="tls", action="store_false")
    parser.add_argument("--sync", choices=("inline", "thread", "ring"), default="inline")
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="role")
    sub.add_parser("follower", help=argparse.SUPPRESS)
    lp = sub.add_parser("leader", help=argparse.SUPPRESS)
    lp.add_argument("--peers", nargs=2, type=int)
    args = parser.parse_args()
    if args.role == "follower":
        trio.run(follower, args)
    elif args.role == "leader":
        trio.run(leader, args)
    else:
        run(args)


if __name__ == "__main__":
    main()
