"""Seeded whole-cluster simulation of the Raft core (see tests/raft/sim).

CI runs ``DEFAULT_SEEDS`` short schedules over clusters of 3, 5 and 7 members; every step is
checked for election safety, log matching, leader completeness and state machine safety, and
each schedule ends with a liveness check after healing and a linearizability check of the
client history.

- a long campaign: ``python -m pytest tests/raft/test_sim.py --raft-seeds 100000 -q``
- replay one seed: ``RAFT_SIM_SEED=<seed> python -m pytest tests/raft/test_sim.py -q``

A seed's cluster size is ``seed // 1_000_000`` (3, 5 or 7), so a seed alone replays.
"""

from __future__ import annotations

import os

import pytest
from sim import SimParams, event_trail, params_for_seed, run_seed

DEFAULT_SEEDS = 2010
CHUNK = 50
#: Share of the seeds per cluster size (smaller clusters are cheaper and find most bugs).
SHARES = {3: 0.55, 5: 0.3, 7: 0.15}


def replay_command(seed: int) -> str:
    return f"RAFT_SIM_SEED={seed} python -m pytest tests/raft/test_sim.py -q"


def seed_chunks(total: int) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for size, share in SHARES.items():
        n = max(1, round(total * share))
        seeds = [size * 1_000_000 + k for k in range(n)]
        out += [(size, seeds[i : i + CHUNK]) for i in range(0, n, CHUNK)]
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seeds" not in metafunc.fixturenames:
        return
    one = os.environ.get("RAFT_SIM_SEED")
    if one:
        seed = int(one)
        metafunc.parametrize(("size", "seeds"), [(params_for_seed(seed).size, [seed])])
        return
    total = metafunc.config.getoption("raft_seeds") or int(
        os.environ.get("RAFT_SEEDS", DEFAULT_SEEDS)
    )
    chunks = seed_chunks(total)
    metafunc.parametrize(
        ("size", "seeds"), chunks, ids=[f"n{s}-{c[0] % 1_000_000}" for s, c in chunks]
    )


def run_or_explain(seed: int, params: SimParams | None = None) -> None:
    try:
        result = run_seed(seed, params)
        assert not result.unchecked_keys, f"checker budget exhausted on {result.unchecked_keys}"
    except AssertionError as exc:
        # Re-run to collect the event trail (the run is deterministic).
        trail = "\n".join(event_trail(seed, params)[-25:])
        pytest.fail(
            f"seed {seed}: {type(exc).__name__}: {exc}\n"
            f"last events:\n{trail}\n"
            f"replay with: {replay_command(seed)}",
            pytrace=False,
        )


def test_seeded_schedules(size: int, seeds: list[int]) -> None:
    for seed in seeds:
        assert params_for_seed(seed).size == size
        run_or_explain(seed)


def test_seed_space_covers_every_size() -> None:
    chunks = seed_chunks(DEFAULT_SEEDS)
    assert {s for s, _ in chunks} == {3, 5, 7}
    assert sum(len(c) for _, c in chunks) >= 2000
    assert params_for_seed(5_000_017).size == 5
