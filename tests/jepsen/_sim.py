"""Histories of a correct (linearizable, serializable) system, generated from a seed.

Each process runs operations one after another; each operation takes effect atomically at a
random instant between its invocation and its completion, in that order, on one state. Some
outcomes are then hidden (``info``: applied or not, at random) or refused (``fail``: not
applied). A checker must accept every such history.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from microtrio.testing._history import CAS_MISMATCH, Event, EventType, History

# (f, key, invoke value) chosen by the workload; apply(state, f, key, value) -> result value
Choose = Callable[[random.Random, int], tuple[str, Any, Any]]
Apply = Callable[[Any, str, Any, Any], Any]


def simulate(
    seed: int,
    *,
    processes: int,
    ops: int,
    state: Any,
    choose: Choose,
    apply: Apply,
    info_rate: float = 0.1,
    fail_rate: float = 0.05,
    may_fail: Callable[[str], bool] = lambda f: True,
) -> History:
    rng = random.Random(seed)
    planned = []
    clock = [0.0] * processes
    for n in range(ops):
        p = rng.randrange(processes)
        call = clock[p] + rng.uniform(0.0001, 0.01)
        ret = call + rng.uniform(0.001, 0.05)
        clock[p] = ret
        f, key, value = choose(rng, n)
        r = rng.random()
        outcome = "info" if r < info_rate else "fail" if r < info_rate + fail_rate else "ok"
        if outcome == "fail" and not may_fail(f):
            outcome = "ok"
        applied = outcome == "ok" or (outcome == "info" and rng.random() < 0.5)
        planned.append((rng.uniform(call, ret), call, ret, p, f, key, value, outcome, applied))
    results = {}
    for i, (_, _, _, _, f, key, value, _, applied) in sorted(
        enumerate(planned), key=lambda x: x[1][0]
    ):
        results[i] = apply(state, f, key, value) if applied else None
    raw: list[tuple[float, int, EventType, int, str, Any, Any, str | None]] = []
    for i, (_, call, ret, p, f, key, value, outcome, _) in enumerate(planned):
        raw.append((call, 0, EventType.INVOKE, p, f, key, value, None))
        done = results[i] if outcome == "ok" else value
        kind = EventType(outcome)
        error = None if outcome == "ok" else "refused"
        if f == "cas" and outcome == "ok":  # a comparison that did not hold is a fail
            kind, error = (EventType.OK, None) if done else (EventType.FAIL, CAS_MISMATCH)
            done = value
        raw.append((ret, 1, kind, p, f, key, done, error))
    raw.sort(key=lambda r: (r[0], r[1]))
    events = tuple(
        Event(i, t, p, time, f, key, v, error)
        for i, (time, _, t, p, f, key, v, error) in enumerate(raw)
    )
    return History(events)
