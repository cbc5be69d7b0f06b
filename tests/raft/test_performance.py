"""Throughput of the core: a 3-voter in-memory cluster must commit and apply > 100k entries/s
when proposals are batched (one core; generous margin for loaded CI machines)."""

from __future__ import annotations

import time

from _rafttest import Net


def test_batched_throughput_exceeds_100k_entries_per_second() -> None:
    net = Net([1, 2, 3], max_msg_entries=4096, max_inflight_msgs=64)
    net.elect(1)
    leader = net.nodes[1]
    batch = [b"x" * 32] * 1000
    best = 0.0
    for _ in range(3):  # best of three, in CPU time: robust against noisy neighbours
        start_index = leader.committed
        t0 = time.process_time()
        for _ in range(40):
            leader.propose_many(batch)
            net.stabilize()
        elapsed = time.process_time() - t0
        done = leader.committed - start_index
        assert done == 40_000
        best = max(best, done / elapsed)
        if best > 100_000:
            break
    for i in (2, 3):
        assert net.nodes[i].applied == leader.applied
    assert best > 100_000, f"{best:.0f} entries/s"
