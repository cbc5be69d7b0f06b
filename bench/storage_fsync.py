"""Durable log throughput: appends per second with one group fsync per batch.

    python bench/storage_fsync.py [--dir PATH] [--seconds 1] [--rounds 3] [--payload 256]

Appends batches of 1, 16 and 256 entries to a fresh :class:`LogStore` (each ``append`` is
one write and one fdatasync) and prints JSON: per batch size, appends (= fsyncs) per second,
entries per second, MB/s of entry data (median of interleaved rounds), and latency
percentiles of one append (all rounds). A last row
(mode ``persist+hardstate``) persists whole Readys of 16 entries plus a changed hard state,
which adds the atomic hard-state replacement (file fsync + directory fsync). Put ``--dir``
on the filesystem you care about: a tmpfs gives meaningless figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from microtrio._replication._storage import LogStore
from microtrio.raft import Entry, EntryType, HardState

BATCH_SIZES = (1, 16, 256)


Mode = tuple[int, bool]  # (batch size, persist a hard state too)


def run_round(
    directory: Path, batch: int, seconds: float, payload: int, *, hard_state: bool
) -> tuple[int, int, float, list[float]]:
    """One timed round: (appends, entries, elapsed seconds, per-append latencies)."""
    data = b"x" * payload
    latencies: list[float] = []
    index = 1
    with LogStore(directory) as store:
        store.load()
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            entries = [Entry(1, i, EntryType.NORMAL, data) for i in range(index, index + batch)]
            before = time.perf_counter()
            if hard_state:  # a whole Ready: entries, then the hard state (commit moves)
                store.persist(HardState(1, 1, index + batch - 1), entries, None)
            else:
                store.append(entries)
            after = time.perf_counter()
            latencies.append(after - before)
            index += batch
            if after >= deadline and len(latencies) >= 5:
                break
        elapsed = time.perf_counter() - start
    return len(latencies), index - 1, elapsed, latencies


def summarise(
    mode: Mode, rounds: list[tuple[int, int, float, list[float]]], payload: int
) -> dict[str, object]:
    batch, hard_state = mode
    rates = sorted(rounds, key=lambda r: r[1] / r[2])
    appends, entries, elapsed, _ = rates[len(rates) // 2]  # the median round
    latencies = [x for r in rounds for x in r[3]]
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "batch": batch,
        "mode": "persist+hardstate" if hard_state else "append",
        "appends_per_s": round(appends / elapsed, 1),
        "entries_per_s": round(entries / elapsed, 1),
        "mb_per_s": round(entries * payload / elapsed / 1e6, 2),
        "p50_ms": round(quantiles[49] * 1e3, 3),
        "p99_ms": round(quantiles[98] * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="parent directory for the log")
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (median kept)")
    parser.add_argument("--payload", type=int, default=256, help="bytes of data per entry")
    args = parser.parse_args()
    modes: list[Mode] = [(batch, False) for batch in BATCH_SIZES] + [(16, True)]
    rounds: dict[Mode, list[tuple[int, int, float, list[float]]]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits every mode alike
        for batch, hard_state in modes:
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="storage-fsync-") as raw:
                rounds[(batch, hard_state)].append(
                    run_round(Path(raw), batch, args.seconds, args.payload, hard_state=hard_state)
                )
    report = {
        "benchmark": "storage_fsync",
        "payload_bytes": args.payload,
        "round_seconds": args.seconds,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": [summarise(m, rounds[m], args.payload) for m in modes],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
