"""A small seeded random-schedule check of the safety properties (the big randomized simulator
lives in tests/raft/sim; this one keeps the unit suite honest on its own)."""

from __future__ import annotations

import random

import pytest
from _rafttest import Net

from microtrio.raft import NotLeaderError, ProposalDroppedError, StateRole


@pytest.mark.parametrize("seed", range(12))
def test_random_partitions_keep_election_and_state_machine_safety(seed: int) -> None:
    rng = random.Random(seed)
    ids = [1, 2, 3, 4, 5]
    net = Net(ids, seed=seed, election_tick=6)
    leaders: dict[int, int] = {}
    proposed = 0
    for _step in range(250):
        action = rng.random()
        if action < 0.05:
            net.heal()
            net.isolate(net.leader() if rng.random() < 0.5 and net.leader() else rng.choice(ids))
        elif action < 0.10:
            net.heal()
        elif action < 0.40:
            leader = net.leader()
            if leader:
                try:
                    net.nodes[leader].propose(b"%d" % proposed)
                    proposed += 1
                except (NotLeaderError, ProposalDroppedError):
                    pass
        for i in ids:
            if rng.random() < 0.7:
                net.nodes[i].tick()
        for _ in range(rng.randrange(1, 30)):
            for i in ids:
                net.process(i)
            if rng.random() < 0.1 and net.queue:
                net.queue.pop(rng.randrange(len(net.queue)))  # message loss
            net.deliver_one()
        for i, node in net.nodes.items():  # election safety: one leader per term
            if node.role is StateRole.LEADER:
                assert leaders.setdefault(node.term, i) == i, f"two leaders in term {node.term}"
        applied = sorted((net.apps[i].applied for i in ids), key=len)
        for shorter in applied:  # state machine safety: applied logs are prefixes of each other
            assert applied[-1][: len(shorter)] == shorter
    net.heal()
    net.tick_all(40)
    assert net.leader() != 0
    longest = max(len(net.apps[i].applied) for i in ids)
    assert all(len(net.apps[i].applied) == longest for i in ids)  # liveness after healing
    assert longest >= 10 and len(leaders) >= 2  # the schedule did exercise something
