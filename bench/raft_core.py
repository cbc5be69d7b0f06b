"""Throughput of the pure Raft core: proposals committed per second, in memory, 3 members.

No disk, no network, no trio: three ``RaftNode`` objects and a loop that hands each Ready's
messages straight to their destination (after "persisting" its entries into a list, as the
Ready contract asks) until the cluster is quiet. This measures the core's own cost per
proposal, the ceiling that the storage and transport layers can only lower.

- batched: ``--batch`` proposals per ready cycle (group commit);
- unbatched: one proposal, then cycle until the leader applied it.

Usage: ``python bench/raft_core.py [--proposals N] [--batch B] [--payload BYTES] [--rounds R]``.
Prints one JSON object (the median of ``--rounds`` rounds), then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import deque

from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    Message,
    RaftNode,
    StateRole,
    bootstrap_state,
)


class Bench:
    def __init__(self, size: int = 3, seed: int = 1) -> None:
        rng = random.Random(seed)
        boot = bootstrap_state(ConfState.of_voters(range(1, size + 1)))
        self.nodes = {i: RaftNode(Config(id=i), rng, boot) for i in range(1, size + 1)}
        self.logs: dict[int, list[Entry]] = {i: [] for i in self.nodes}
        self.applied: dict[int, int] = dict.fromkeys(self.nodes, 0)
        self.queue: deque[Message] = deque()

    def handle(self, node_id: int) -> bool:
        node, worked = self.nodes[node_id], False
        while node.has_ready():
            rd = node.ready()
            if rd.entries:  # "persist": truncate a replaced suffix, then append
                log, first = self.logs[node_id], rd.entries[0].index
                while log and log[-1].index >= first:
                    log.pop()
                log.extend(rd.entries)
            self.queue.extend(rd.messages)
            if rd.committed_entries:
                self.applied[node_id] = rd.committed_entries[-1].index
            node.advance(rd)
            worked = True
        return worked

    def pump(self) -> None:
        """Deliver and handle until nothing is left to do."""
        busy = True
        while busy:
            busy = False
            for i in self.nodes:
                busy |= self.handle(i)
            while self.queue:
                msg = self.queue.popleft()
                self.nodes[msg.dst].step(msg)
                busy = True

    def elect(self) -> int:
        for _ in range(1000):
            for node in self.nodes.values():
                node.tick()
            self.pump()
            for i, node in self.nodes.items():
                if node.status().role is StateRole.LEADER:
                    return i
        raise RuntimeError("no leader elected")


def run(proposals: int, batch: int, payload: int) -> dict[str, float]:
    bench = Bench()
    leader_id = bench.elect()
    leader = bench.nodes[leader_id]
    data = b"x" * payload
    start_applied = bench.applied[leader_id]
    t0 = time.perf_counter()
    done = 0
    while done < proposals:
        n = min(batch, proposals - done)
        last = 0
        for _ in range(n):
            last = leader.propose(data)
        bench.pump()
        if bench.applied[leader_id] < last:
            raise RuntimeError(f"proposal {last} not applied after a full cycle")
        done += n
    elapsed = time.perf_counter() - t0
    committed = bench.applied[leader_id] - start_applied
    return {
        "proposals": proposals,
        "committed": committed,
        "batch": batch,
        "seconds": round(elapsed, 4),
        "per_second": round(committed / elapsed, 1),
    }


def median_run(rounds: int, proposals: int, batch: int, payload: int) -> dict[str, float]:
    runs = sorted((run(proposals, batch, payload) for _ in range(rounds)), key=_rate)
    return runs[len(runs) // 2]


def _rate(r: dict[str, float]) -> float:
    return r["per_second"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--proposals", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="report the median round")
    args = ap.parse_args(argv)
    batched = median_run(args.rounds, args.proposals, args.batch, args.payload)
    unbatched = median_run(args.rounds, max(1, args.proposals // 10), 1, args.payload)
    report = {
        "bench": "raft_core",
        "members": 3,
        "payload_bytes": args.payload,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "batched": batched,
        "unbatched": unbatched,
    }
    print(json.dumps(report))
    print(
        f"raft core, 3 members in memory: {batched['per_second']:.0f} proposals/s batched "
        f"({args.batch}/cycle), {unbatched['per_second']:.0f} proposals/s unbatched"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
