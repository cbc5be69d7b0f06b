"""No false alarms: histories of a correct system pass every checker; corrupted ones do not."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from microtrio.testing._checkers import check_append, check_bank, check_register, check_set
from microtrio.testing._history import EventType, History

from ._sim import simulate

SEEDS = range(8)


def register_history(seed: int) -> History:
    def choose(rng: random.Random, n: int) -> tuple[str, Any, Any]:
        key = rng.choice("xyz")
        f = rng.choice(["read", "write", "cas"])
        if f == "write":
            return f, key, rng.randrange(5)
        if f == "cas":
            return f, key, [rng.randrange(5), rng.randrange(5)]
        return f, key, None

    def apply(state: dict[str, Any], f: str, key: str, value: Any) -> Any:
        if f == "read":
            return state.get(key)
        if f == "write":
            state[key] = value
            return value
        if state.get(key) == value[0]:
            state[key] = value[1]
            return True
        return False

    return simulate(seed, processes=5, ops=150, state={}, choose=choose, apply=apply)


ACCOUNTS = ["a", "b", "c", "d"]


def bank_history(seed: int) -> History:
    def choose(rng: random.Random, n: int) -> tuple[str, Any, Any]:
        if rng.random() < 0.3:
            return "read", None, None
        src, dst = rng.sample(ACCOUNTS, 2)
        return "transfer", None, {"from": src, "to": dst, "amount": rng.randint(1, 5)}

    def apply(state: dict[str, int], f: str, key: Any, value: Any) -> Any:
        if f == "read":
            return dict(state)
        state[value["from"]] -= value["amount"]
        state[value["to"]] += value["amount"]
        return value

    return simulate(
        seed, processes=5, ops=200, state=dict.fromkeys(ACCOUNTS, 20), choose=choose,
        apply=apply, may_fail=lambda f: f != "read",
    )  # fmt: skip


def set_history(seed: int) -> History:
    def choose(rng: random.Random, n: int) -> tuple[str, Any, Any]:
        return ("read", None, None) if rng.random() < 0.15 else ("add", None, n)

    def apply(state: list[int], f: str, key: Any, value: Any) -> Any:
        if f == "read":
            return list(state)
        state.append(value)
        return value

    return simulate(seed, processes=5, ops=200, state=[], choose=choose, apply=apply)


def append_history(seed: int, ops: int = 200) -> History:
    counter = iter(range(1, 10**9))

    def choose(rng: random.Random, n: int) -> tuple[str, Any, Any]:
        mops = []
        for _ in range(rng.randint(1, 4)):
            key = rng.choice("wxyz")
            mops.append(["r", key, None] if rng.random() < 0.5 else ["append", key, next(counter)])
        return "txn", None, mops

    def apply(state: dict[str, list[int]], f: str, key: Any, value: Any) -> Any:
        out = []
        for m, k, v in value:
            if m == "append":
                state.setdefault(k, []).append(v)
                out.append([m, k, v])
            else:
                out.append([m, k, list(state.get(k, []))])
        return out

    return simulate(seed, processes=6, ops=ops, state={}, choose=choose, apply=apply)


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_histories_pass(seed: int) -> None:
    r = check_register(register_history(seed))
    assert r.valid, r.anomalies
    r = check_bank(
        bank_history(seed), accounts=ACCOUNTS, total=80, initial=dict.fromkeys(ACCOUNTS, 20),
        allow_negative=True,
    )  # fmt: skip
    assert r.valid, r.anomalies
    r = check_set(set_history(seed))
    assert r.valid, r.anomalies
    h = append_history(seed)
    r = check_append(h, realtime=True)
    assert r.valid, r.anomalies
    assert r.stats["edges"] > 50  # the graph is not trivially empty


def corrupt_last_read(h: History, f: str, change: Any) -> History:
    """Replace the value of the last ok completion of ``f``."""
    events = list(h.events)
    i = max(i for i, e in enumerate(events) if e.type is EventType.OK and e.f == f)
    events[i] = dataclasses.replace(events[i], value=change(events[i].value))
    return History(tuple(events))


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupted_histories_fail(seed: int) -> None:
    h = corrupt_last_read(
        set_history(seed), "read", lambda v: [x for x in v if x != max(v, default=None)] + [-1]
    )
    assert "unexpected" in check_set(h).kinds()

    h = corrupt_last_read(register_history(seed), "read", lambda v: 99)  # never written
    assert check_register(h).kinds() == {"nonlinearizable"}

    def move_money(v: dict[str, int]) -> dict[str, int]:
        return {**v, "a": v["a"] + 1}

    h = corrupt_last_read(bank_history(seed), "read", move_money)
    r = check_bank(h, accounts=ACCOUNTS, total=80, allow_negative=True)
    assert r.kinds() == {"wrong-total"}

    h = append_history(seed)
    events = list(h.events)

    def longest_read(e: Any) -> int:
        ok = e.type is EventType.OK and e.f == "txn"
        return max((len(m[2]) for m in e.value if m[0] == "r"), default=0) if ok else 0

    i = max(range(len(events)), key=lambda i: longest_read(events[i]))
    assert longest_read(events[i]) >= 2
    mops = [list(m) for m in events[i].value]
    for m in mops:
        if m[0] == "r" and len(m[2]) == longest_read(events[i]):
            m[2] = [m[2][1], m[2][0], *m[2][2:]]  # swap the two oldest versions
    events[i] = dataclasses.replace(events[i], value=mops)
    r = check_append(History(tuple(events)), realtime=True)
    assert not r.valid


def test_elle_scales_to_thousands_of_transactions() -> None:
    h = append_history(99, ops=2000)
    r = check_append(h, realtime=True)
    assert r.valid and r.stats["transactions"] == 2000
