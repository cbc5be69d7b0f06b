"""Where one write's time goes: a stage timeline of sequential writes (c=1) on the leader.

    python bench/write_timeline.py [-n 400] [--on leader|follower] [--dir DIR]

A 3-member cluster in ONE process (``tests/replication/_raft_cluster.py``, as
``bench/db_path.py``: mutual-TLS Raft channel on 127.0.0.1, durable log with fdatasync,
APSW, production ``DriverConfig``). Writes run one after the other; every stage of the write
path is stamped with ``time.perf_counter`` (by monkeypatching, nothing in the library
changes), and for each write the first time each stage happened on each member is taken
relative to the client's call. Prints, per stage, the median and p90 offset in microseconds
(sorted by median), and per write the median number of trio scheduler batches (I/O waits)
between the call and its return.

Stage names: ``<member>:<stage>``; ``L`` is the leader, ``F1``/``F2`` the followers.
``tx``/``rx`` are messages handed to / delivered by the transport, ``wire`` the moment a
member's sender task encodes a frame (just before the socket write), ``step`` the driver
stepping an inbound message, ``persist>``/``persist<`` the log store call (thread hop and
fdatasync included), ``apply>``/``applied`` the state machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "replication"))
sys.path.insert(0, str(ROOT))

from _raft_cluster import open_cluster  # noqa: E402

from microtrio._replication import (  # noqa: E402
    DriverConfig,  # noqa: E402
    _driver,
    _storage,
    _transport,
)
from microtrio.raft import MsgApp  # noqa: E402

_events: list[tuple[float, str]] = []
_names: dict[int, str] = {}  # node id -> L / F1 / F2
_stores: dict[int, int] = {}  # id(AsyncLogStore) -> node id
_batches = 0


def _stamp(node_id: int, stage: str) -> None:
    _events.append((time.perf_counter(), f"{_names.get(node_id, node_id)}:{stage}"))


def _kind(msg: Any) -> str:
    name = type(msg).__name__
    if isinstance(msg, MsgApp):
        return "MsgApp+e" if msg.entries else ("MsgApp/commit" if not msg.ack else "MsgApp/empty")
    return name


class _Batches(trio.abc.Instrument):
    def after_io_wait(self, timeout: float) -> None:
        global _batches
        _batches += 1


def _instrument() -> None:
    send = _transport.Transport.send

    def tx(self: Any, messages: Any) -> None:
        messages = list(messages)
        for msg in messages:
            _stamp(self.node_id, f"tx {_kind(msg)}->{_names.get(msg.dst, msg.dst)}")
        send(self, messages)

    _transport.Transport.send = tx  # type: ignore[method-assign]

    deliver = _transport.Transport._deliver

    async def rx(self: Any, messages: list[Any]) -> None:
        for msg in messages:
            _stamp(self.node_id, f"rx {_kind(msg)}<-{_names.get(msg.src, msg.src)}")
        await deliver(self, messages)

    _transport.Transport._deliver = rx  # type: ignore[method-assign]

    encode_record = _transport.encode_record

    def wire(node_id: int, payloads: Any) -> bytes:
        _stamp(node_id, "wire")
        return encode_record(node_id, payloads)

    _transport.encode_record = wire  # type: ignore[assignment]

    handle = _driver.RaftDriver._handle

    def step(self: Any, node: Any, event: Any) -> None:
        msg = getattr(event, "msg", event)  # (older trees wrap messages in _Inbound)
        if not isinstance(event, _driver._Request):
            _stamp(self.id, f"step {_kind(msg)}")
        else:
            _stamp(self.id, "request")
        handle(self, node, event)

    _driver.RaftDriver._handle = step  # type: ignore[method-assign]

    ready = _driver.RaftDriver._handle_ready

    async def on_ready(self: Any, node: Any, rd: Any) -> None:
        what = "ready+e" if rd.entries else ("ready+c" if rd.committed_entries else "ready")
        _stamp(self.id, what)
        await ready(self, node, rd)
        _stamp(self.id, what + " done")

    _driver.RaftDriver._handle_ready = on_ready  # type: ignore[method-assign]

    tick_due = _driver.RaftDriver._tick_due

    def tick(self: Any, node: Any, next_tick: float) -> float:
        _stamp(self.id, "loop")
        return tick_due(self, node, next_tick)

    _driver.RaftDriver._tick_due = tick  # type: ignore[method-assign]

    persist = _storage.AsyncLogStore.persist

    async def persisted(self: Any, hard_state: Any, entries: Any, snapshot: Any) -> None:
        node_id = _stores.get(id(self), 0)
        _stamp(node_id, "persist>" if entries else "persist hs>")
        await persist(self, hard_state, entries, snapshot)
        _stamp(node_id, "persist<" if entries else "persist hs<")

    _storage.AsyncLogStore.persist = persisted  # type: ignore[method-assign]

    record = _driver.RaftDriver._record_applied

    def applied(self: Any, index: int, term: int) -> None:
        _stamp(self.id, "applied")
        record(self, index, term)

    _driver.RaftDriver._record_applied = applied  # type: ignore[method-assign]


async def run(args: argparse.Namespace) -> None:
    global _batches
    trio.lowlevel.add_instrument(_Batches())
    with tempfile.TemporaryDirectory(prefix="write-timeline.", dir=args.dir) as tmp:
        async with open_cluster(Path(tmp), 3, driver_config=DriverConfig()) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(
                lambda conn: conn.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)")
            )
            members = cluster.running()
            followers = [m for m in members if m is not leader]
            _names[leader.id] = "L"
            for n, m in enumerate(followers, 1):
                _names[m.id] = f"F{n}"
            for m in members:
                _stores[id(m.repl.driver._store)] = m.id
                await m.db.read(lambda conn: None)
            target = leader if args.on == "leader" else followers[0]
            sql = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            for n in range(50):  # warm-up
                await target.db.execute(sql, (n % 8, n))
            offsets: dict[str, list[float]] = {}
            totals: list[float] = []
            batches: list[int] = []
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            for n in range(args.count):
                _events.clear()
                b0 = _batches
                start = time.perf_counter()
                await target.db.execute(sql, (n % 8, n))
                end = time.perf_counter()
                batches.append(_batches - b0)
                totals.append(end - start)
                seen: set[str] = set()
                for t, stage in _events:
                    if stage in seen or t > end:
                        continue
                    seen.add(stage)
                    offsets.setdefault(stage, []).append(t - start)
                offsets.setdefault("client: returned", []).append(end - start)
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
    rows = []
    for stage, values in offsets.items():
        if len(values) < args.count // 2:
            continue  # a stage most writes do not go through
        values.sort()
        rows.append((statistics.median(values), values[int(len(values) * 0.9)], len(values), stage))
    rows.sort()
    print(f"{'stage':40s} {'p50 us':>8s} {'p90 us':>8s} {'writes':>7s}")
    for med, p90, count, stage in rows:
        print(f"{stage:40s} {med * 1e6:8.0f} {p90 * 1e6:8.0f} {count:7d}")
    print(
        f"writes {args.count} on {args.on}: p50 {statistics.median(totals) * 1e3:.3f} ms, "
        f"{args.count / wall:.0f}/s, CPU {cpu * 1e3 / args.count:.3f} ms per write "
        f"(process, 3 members, instrumented), scheduler batches per write "
        f"p50 {statistics.median(batches):.0f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", "--count", type=int, default=400)
    p.add_argument("--on", default="leader", choices=["leader", "follower"])
    p.add_argument("--dir", default=None, help="parent of the temporary state directory")
    args = p.parse_args()
    _instrument()
    trio.run(run, args)


if __name__ == "__main__":
    main()
