"""Hand-made histories the linearizability checker must accept or reject."""

from __future__ import annotations

import random

import pytest

from microtrio.testing._linearizability import (
    Add,
    Append,
    Cas,
    ListModel,
    Operation,
    Read,
    RegisterModel,
    SetModel,
    Verdict,
    Write,
    check_linearizability,
)

REG = RegisterModel()


def op(
    call: float, ret: float | None, inp: object, out: object = None, key: object = "x"
) -> Operation:
    return Operation(call=call, ret=ret, input=inp, output=out, key=key)


def verdict(history: list[Operation], model: object = REG) -> Verdict:
    return check_linearizability(history, model).verdict  # type: ignore[arg-type]


# --- register: accepted -----------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert verdict([]) is Verdict.OK


def test_sequential_write_then_read() -> None:
    assert verdict([op(0, 1, Write(1)), op(2, 3, Read(), 1)]) is Verdict.OK


def test_read_of_initial_value() -> None:
    assert verdict([op(0, 1, Read(), None)]) is Verdict.OK
    assert verdict([op(0, 1, Read(), 7)], RegisterModel(initial=7)) is Verdict.OK


def test_concurrent_read_may_see_either_value() -> None:
    for seen in (0, 1):
        history = [op(0, 1, Write(0)), op(2, 5, Write(1)), op(3, 4, Read(), seen)]
        assert verdict(history) is Verdict.OK


def test_concurrent_reads_may_disagree_only_consistently() -> None:
    # Two overlapping reads during a write: one sees old, one sees new: fine.
    history = [
        op(0, 1, Write(0)),
        op(2, 10, Write(1)),
        op(3, 4, Read(), 1),
        op(5, 6, Read(), 1),
    ]
    assert verdict(history) is Verdict.OK


def test_cas_success_and_failure() -> None:
    history = [
        op(0, 1, Write(1)),
        op(2, 3, Cas(1, 2), True),
        op(4, 5, Cas(1, 3), False),
        op(6, 7, Read(), 2),
    ]
    assert verdict(history) is Verdict.OK


# --- register: rejected -----------------------------------------------------------------------


def test_stale_read_is_rejected() -> None:
    history = [op(0, 1, Write(1)), op(2, 3, Write(2)), op(4, 5, Read(), 1)]
    result = check_linearizability(history, REG)
    assert result.verdict is Verdict.ILLEGAL
    assert not result
    assert result.key == "x"
    assert "Read()" in result.explanation and "-> 1" in result.explanation


def test_lost_write_is_rejected() -> None:
    # The write was acknowledged, yet a later read still sees the initial value.
    history = [op(0, 1, Write(5)), op(2, 3, Read(), None)]
    assert verdict(history) is Verdict.ILLEGAL


def test_read_of_never_written_value_is_rejected() -> None:
    history = [op(0, 1, Write(1)), op(0.5, 3, Read(), 42)]
    assert verdict(history) is Verdict.ILLEGAL


def test_reads_going_back_in_time_are_rejected() -> None:
    # New value observed, then the old one again by a later read: non-linearizable.
    history = [
        op(0, 1, Write(0)),
        op(2, 20, Write(1)),
        op(3, 4, Read(), 1),
        op(5, 6, Read(), 0),
    ]
    assert verdict(history) is Verdict.ILLEGAL


def test_two_successful_cas_from_the_same_value_are_rejected() -> None:
    history = [
        op(0, 1, Write(0)),
        op(2, 5, Cas(0, 1), True),
        op(3, 6, Cas(0, 2), True),
    ]
    assert verdict(history) is Verdict.ILLEGAL


def test_failed_cas_when_value_matched_is_rejected() -> None:
    history = [op(0, 1, Write(3)), op(2, 3, Cas(3, 4), False)]
    assert verdict(history) is Verdict.ILLEGAL


def test_successful_cas_when_value_differed_is_rejected() -> None:
    history = [op(0, 1, Write(3)), op(2, 3, Cas(9, 4), True)]
    assert verdict(history) is Verdict.ILLEGAL


def test_cas_effect_must_be_visible() -> None:
    history = [op(0, 1, Write(0)), op(2, 3, Cas(0, 1), True), op(4, 5, Read(), 0)]
    assert verdict(history) is Verdict.ILLEGAL


# --- unknown outcomes --------------------------------------------------------------------------


def test_unknown_write_may_have_happened() -> None:
    history = [op(0, 1, Write(0)), op(2, None, Write(1)), op(10, 11, Read(), 1)]
    assert verdict(history) is Verdict.OK


def test_unknown_write_may_have_never_happened() -> None:
    history = [op(0, 1, Write(0)), op(2, None, Write(1)), op(10, 11, Read(), 0)]
    assert verdict(history) is Verdict.OK


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    history = [op(0, 1, Write(0)), op(2, 3, Read(), 1), op(5, None, Write(1))]
    assert verdict(history) is Verdict.ILLEGAL


def test_unknown_write_takes_effect_once() -> None:
    # Seen, then overwritten, then seen again: it cannot have happened twice.
    history = [
        op(0, 1, Write(0)),
        op(2, None, Write(1)),
        op(3, 4, Read(), 1),
        op(5, 6, Write(2)),
        op(7, 8, Read(), 1),
    ]
    assert verdict(history) is Verdict.ILLEGAL


def test_unknown_cas_may_or_may_not_swap() -> None:
    base = [op(0, 1, Write(0)), op(2, None, Cas(0, 1))]
    assert verdict([*base, op(5, 6, Read(), 1)]) is Verdict.OK
    assert verdict([*base, op(5, 6, Read(), 0)]) is Verdict.OK
    assert verdict([*base, op(5, 6, Read(), 2)]) is Verdict.ILLEGAL


def test_unknown_read_is_ignored() -> None:
    history = [op(0, 1, Write(0)), op(2, None, Read(), 99), op(3, 4, Read(), 0)]
    assert verdict(history) is Verdict.OK


# --- keys, models, budget ----------------------------------------------------------------------


def test_history_is_partitioned_by_key() -> None:
    history = [
        op(0, 1, Write(1), key="a"),
        op(0, 1, Write(2), key="b"),
        op(2, 3, Read(), 1, key="a"),
        op(2, 3, Read(), 1, key="b"),  # b never held 1
    ]
    result = check_linearizability(history, REG)
    assert result.verdict is Verdict.ILLEGAL
    assert result.key == "b"


def test_list_model() -> None:
    lm = ListModel()
    ok = [
        op(0, 3, Append(1)),
        op(1, 4, Append(2)),
        op(5, 6, Read(), (2, 1)),
        op(7, 8, Read(), [2, 1]),
    ]
    assert verdict(ok, lm) is Verdict.OK
    lost = [op(0, 1, Append(1)), op(2, 3, Append(2)), op(4, 5, Read(), (2,))]
    assert verdict(lost, lm) is Verdict.ILLEGAL
    reordered = [op(0, 1, Append(1)), op(2, 3, Append(2)), op(4, 5, Read(), (2, 1))]
    assert verdict(reordered, lm) is Verdict.ILLEGAL
    dup = [op(0, 1, Append(1)), op(2, 3, Read(), (1, 1))]
    assert verdict(dup, lm) is Verdict.ILLEGAL
    unknown = [op(0, None, Append(1)), op(2, 3, Read(), ()), op(4, 5, Read(), (1,))]
    assert verdict(unknown, lm) is Verdict.OK


def test_set_model() -> None:
    sm = SetModel()
    assert verdict([op(0, 1, Add(1)), op(0, 2, Add(2)), op(3, 4, Read(), {1, 2})], sm) is Verdict.OK
    assert verdict([op(0, 1, Add(1)), op(3, 4, Read(), set())], sm) is Verdict.ILLEGAL


def test_budget_gives_unknown_not_a_hang() -> None:
    # Many fully concurrent writes and a read of a value none of them wrote: the search must
    # explore many orders before it could conclude; a tiny budget stops it.
    history = [op(0, 100, Write(i)) for i in range(14)] + [op(0, 100, Read(), -1)]
    result = check_linearizability(history, REG, max_steps=50)
    assert result.verdict is Verdict.UNKNOWN
    assert result.steps <= 51


def test_return_before_call_is_refused() -> None:
    with pytest.raises(ValueError):
        Operation(call=2, ret=1, input=Read())


def test_unknown_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        check_linearizability([op(0, 1, Append(1))], REG)


def _random_sequential_history(rng: random.Random, n: int) -> list[Operation]:
    """Operations run one at a time against a real register, then given overlapping but
    consistent intervals: always linearizable."""
    value: object = None
    history = []
    for i in range(n):
        kind = rng.randrange(3)
        point = 10 * i + 5  # the true linearization point
        call, ret = point - rng.uniform(0, 14), point + rng.uniform(0, 14)
        if kind == 0:
            value = rng.randrange(4)
            history.append(op(call, ret, Write(value)))
        elif kind == 1:
            history.append(op(call, ret, Read(), value))
        else:
            exp, new = rng.randrange(4), rng.randrange(4)
            swapped = value == exp
            if swapped:
                value = new
            history.append(op(call, ret, Cas(exp, new), swapped))
    return history


def test_random_linearizable_histories_are_accepted() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        history = _random_sequential_history(rng, rng.randrange(1, 25))
        assert check_linearizability(history, REG).verdict is Verdict.OK


def test_random_corrupted_reads_are_mostly_rejected() -> None:
    rng = random.Random(99)
    rejected = 0
    for _ in range(200):
        history = _random_sequential_history(rng, 12)
        # Corrupt one read into a value nobody ever wrote.
        reads = [i for i, o in enumerate(history) if isinstance(o.input, Read)]
        if not reads:
            continue
        i = rng.choice(reads)
        o = history[i]
        history[i] = op(o.call, o.ret, Read(), 1000)
        assert check_linearizability(history, REG).verdict is Verdict.ILLEGAL
        rejected += 1
    assert rejected > 100


def _concurrent_history(rng: random.Random, per_key: int) -> list[Operation]:
    """Clients overlapping about three at a time on a real atomic register, per key, plus
    some writes whose outcome is unknown and which never happened."""
    history: list[Operation] = []
    for key in "abc":
        value: int | None = None
        for i in range(per_key):
            point = float(i + 1)
            call, ret = point - rng.uniform(0, 2), point + rng.uniform(0, 2)
            kind = rng.randrange(3)
            if kind == 0:
                value = i
                history.append(op(call, ret, Write(i), key=key))
            elif kind == 1:
                history.append(op(call, ret, Read(), value, key=key))
            else:
                expected = rng.choice([value, i - 1])
                swapped = value == expected
                if swapped:
                    value = i
                history.append(op(call, ret, Cas(expected, i), swapped, key=key))
            if rng.random() < 0.05:
                history.append(op(point + 0.5, None, Write(-i - 1), key=key))
    return history


def test_long_concurrent_history_is_checked_within_a_small_budget() -> None:
    history = _concurrent_history(random.Random(5), 400)
    result = check_linearizability(history, REG, max_steps=50_000)
    assert result.verdict is Verdict.OK
    # Break one late read: it now returns a value that was overwritten long ago.
    i = max(k for k, o in enumerate(history) if isinstance(o.input, Read) and o.key == "b")
    o = history[i]
    history[i] = op(o.call, o.ret, Read(), -1, key="b")
    result = check_linearizability(history, REG, max_steps=50_000)
    assert result.verdict is Verdict.ILLEGAL
    assert result.key == "b"
