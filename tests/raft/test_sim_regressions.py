"""Regression tests for core bugs the simulator found (see tests/raft/sim/FINDINGS.md)."""

from __future__ import annotations

import logging
import random

import pytest
from sim import Cluster, Faults, Network, run_seed

from microtrio.raft import Config, ConfState, Message, RaftNode, StateRole, bootstrap_state


def small_window_cluster() -> Cluster:
    rng = random.Random(7)

    def config(node_id: int, applied: int) -> Config:
        return Config(id=node_id, max_inflight_msgs=1, max_msg_entries=1, applied=applied)

    cluster = Cluster(rng, config, RaftNode, Network[Message](rng, Faults()))
    cluster.eager_ready = 1.0
    boot = bootstrap_state(ConfState.of_voters([1, 2, 3]))
    for i in (1, 2, 3):
        cluster.add_node(i, boot)
    return cluster


def run_ticks(cluster: Cluster, ticks: int) -> None:
    for _ in range(ticks):
        cluster.now += 1
        for node in cluster.nodes.values():
            cluster.tick(node)
        for _frm, _to, msg in cluster.net.due(cluster.now):
            cluster.deliver(msg)
        cluster.handle_all()


def test_full_window_recovers_after_lost_appends(caplog: pytest.LogCaptureFixture) -> None:
    """Finding 1: with a window of one append, losing that append must not stall the
    follower forever (a heartbeat response has to reopen the window)."""
    caplog.set_level(logging.CRITICAL, logger="microtrio.raft")
    cluster = small_window_cluster()
    run_ticks(cluster, 60)
    leader = cluster.leader()
    assert leader is not None and leader.raft is not None
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    # Appends to the follower are lost while the leader fills its window.
    cluster.net.cut_one_way(leader.id, follower.id)
    last = 0
    for k in range(5):
        last = leader.raft.propose(b"")
        run_ticks(cluster, 1)
        assert leader.role is StateRole.LEADER, k
    run_ticks(cluster, 3)
    cluster.net.heal()
    run_ticks(cluster, 30)
    assert follower.sm.applied >= last, (follower.sm.applied, last)


def test_seed_that_found_it_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="microtrio.raft")
    result = run_seed(3_000_012)
    assert result.committed > 0
