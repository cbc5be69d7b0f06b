"""The Raft channel alone: two transports in ONE process exchanging messages over real
mutual TLS on 127.0.0.1 (the core listener seam, ``serve_tcp``), no Raft, no database.

    python bench/raft_channel.py [-n 3000] [--stream 200000] [--json]

* ``ping-pong``: member 1 sends one heartbeat, member 2's task answers it, member 1 waits
  for the answer; ``-n`` round trips. Every frame carries one message, so this is the
  per-message cost of the channel (framing, TLS, the receive path, both directions):
  round trip p50/p99 and process CPU per message (``time.process_time`` / 2n).
* ``stream``: member 1 sends ``--stream`` heartbeats in chunks of 500 as fast as member 2
  takes them: messages/s and CPU per message when frames carry many messages.

Runs against the ALPN raw-stream channel (``serve_stream``) or, on an older tree, the
websocket route (``add_raft_route``), so before/after can be compared alternately.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from microtrio._api._listener import serve_tcp  # noqa: E402
from microtrio._certs import (  # noqa: E402
    SSLContextHolder,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
)
from microtrio._replication import _transport  # noqa: E402
from microtrio._replication._transport import (  # noqa: E402
    RAFT_CODEC,
    Transport,
    TransportConfig,
)
from microtrio.raft import Message, MsgHeartbeat  # noqa: E402

RAW = hasattr(Transport, "serve_stream")


async def _member(
    node_id: int, cluster: Any, pairs: dict[int, Any], nursery: trio.Nursery
) -> tuple[Transport[Message], str]:
    transport = Transport[Message](
        node_id,
        codec=RAFT_CODEC,
        ssl_context=client_ssl_context(pairs[node_id], cluster.cert),
        is_trusted={p.der for p in pairs.values()}.__contains__,
        config=TransportConfig(server_hostname=pinned_server_name(cluster.cert)),
        rng=random.Random(node_id),
    )
    if RAW:
        from microtrio._replication._transport import (  # type: ignore[attr-defined]
            CORE_ALPN_PROTOCOLS,
            RAFT_ALPN,
        )

        holder = SSLContextHolder(cluster, alpn_protocols=CORE_ALPN_PROTOCOLS)
        handlers = {RAFT_ALPN: transport.serve_stream}
        app: Any = None

        async def serve(task_status: trio.TaskStatus[str]) -> None:
            await serve_tcp(
                app,
                "127.0.0.1:0",
                holder,
                lifespan=False,
                stream_handlers=handlers,
                task_status=task_status,
            )
    else:
        from quart_trio import QuartTrio

        app = QuartTrio(f"m{node_id}")
        _transport.add_raft_route(app, transport)  # type: ignore[attr-defined]
        holder = SSLContextHolder(cluster)

        async def serve(task_status: trio.TaskStatus[str]) -> None:
            await serve_tcp(app, "127.0.0.1:0", holder, task_status=task_status)

    address = await nursery.start(serve)
    await nursery.start(transport.run)
    return transport, address


def hb(src: int, dst: int, seq: int) -> MsgHeartbeat:
    return MsgHeartbeat(src=src, dst=dst, term=1, commit=seq)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = generate_cert_key_pair("microtrio-cluster")
    pairs = {i: generate_cert_key_pair(f"m{i}") for i in (1, 2)}
    result: dict[str, Any] = {"channel": "alpn-raw" if RAW else "websocket"}
    async with trio.open_nursery() as nursery:
        t1, a1 = await _member(1, cluster, pairs, nursery)
        t2, a2 = await _member(2, cluster, pairs, nursery)
        t1.add_peer(2, a2)
        t2.add_peer(1, a1)

        async def echo() -> None:
            while True:
                for msg in await t2.receive_batch():
                    t2.send([hb(2, 1, msg.commit)])  # type: ignore[attr-defined]

        nursery.start_soon(echo)
        for i in range(200):  # warm-up: both links connected
            t1.send([hb(1, 2, i)])
            await t1.receive()
        rtts = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(args.n):
            start = time.perf_counter()
            t1.send([hb(1, 2, i)])
            await t1.receive()
            rtts.append(time.perf_counter() - start)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rtts.sort()
        result["ping_pong"] = {
            "round_trips": args.n,
            "rtt_p50_us": round(statistics.median(rtts) * 1e6),
            "rtt_p99_us": round(rtts[int(len(rtts) * 0.99)] * 1e6),
            "round_trips_per_s": round(args.n / wall),
            "cpu_per_message_us": round(cpu / (2 * args.n) * 1e6, 1),
        }
        nursery.cancel_scope.cancel()

    # The stream phase on fresh transports (no echo task).
    async with trio.open_nursery() as nursery:
        t1, a1 = await _member(1, cluster, pairs, nursery)
        t2, a2 = await _member(2, cluster, pairs, nursery)
        t1.add_peer(2, a2)
        t1.send([hb(1, 2, 0)])
        await t2.receive()
        total, chunk, got = args.stream, 500, 0
        cpu0, wall0 = time.process_time(), time.perf_counter()

        async def produce() -> None:
            sent = 0
            while sent < total:
                while t1.statistics().peers[2].queued > 2000:  # noqa: ASYNC110 - no event
                    await trio.lowlevel.checkpoint()
                t1.send([hb(1, 2, i) for i in range(sent, sent + chunk)])
                sent += chunk
                await trio.lowlevel.checkpoint()

        nursery.start_soon(produce)
        while got < total:
            got += len(await t2.receive_batch(limit=4096))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        stats = t1.statistics().peers[2]
        result["stream"] = {
            "messages": total,
            "messages_per_s": round(total / wall),
            "cpu_per_message_us": round(cpu / total * 1e6, 2),
            "frames": stats.frames,
            "dropped": stats.dropped,
        }
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="ping-pong round trips")
    parser.add_argument("--stream", type=int, default=200_000, help="messages streamed")
    parser.add_argument("--json", action="store_true", help="one JSON line only")
    args = parser.parse_args()
    result = trio.run(run, args)
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
