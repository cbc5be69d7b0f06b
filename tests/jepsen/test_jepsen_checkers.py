"""Hand-made histories each checker must accept, and ones it must reject."""

from __future__ import annotations

from typing import Any

from microtrio.testing._checkers import (
    CheckResult,
    Validity,
    check_append,
    check_bank,
    check_register,
    check_set,
    verdict_json,
)

from ._hist import Spec, history, op, ops

# --- register ---------------------------------------------------------------------------------


def test_register_accepts_linearizable_history() -> None:
    h = history(
        op("write", 1, key="x", call=0, ret=1),
        op("read", key="x", result=1, call=2, ret=3),
        op("cas", [1, 2], key="x", call=4, ret=5),
        op("cas", [1, 3], key="x", out="fail", error="cas-mismatch", call=6, ret=7),
        op("read", key="x", result=2, call=8, ret=9),
        op("read", key="y", result=None, call=8, ret=9),
    )
    r = check_register(h)
    assert r.valid, r.anomalies


def test_register_rejects_stale_read() -> None:
    h = history(
        op("write", 1, key="x", call=0, ret=1),
        op("write", 2, key="x", call=2, ret=3),
        op("read", key="x", result=1, call=4, ret=5),
    )
    r = check_register(h)
    assert r.validity is Validity.INVALID and r.kinds() == {"nonlinearizable"}
    assert "'x'" in r.anomalies[0].message


def test_register_cas_mismatch_is_an_observation() -> None:
    # The comparison failed although the register held 1: not linearizable.
    h = history(
        op("write", 1, key="x", call=0, ret=1),
        op("cas", [1, 2], key="x", out="fail", error="cas-mismatch", call=2, ret=3),
    )
    assert not check_register(h)
    # Any other failure means "not done" and constrains nothing.
    h = history(
        op("write", 1, key="x", call=0, ret=1),
        op("cas", [1, 2], key="x", out="fail", error="no leader", call=2, ret=3),
    )
    assert check_register(h)


def test_register_unknown_write_may_or_may_not_apply() -> None:
    for seen in (1, 2):
        h = history(
            op("write", 1, key="x", call=0, ret=1),
            op("write", 2, key="x", out="info", call=2, ret=3),
            op("read", key="x", result=seen, call=4, ret=5),
        )
        assert check_register(h).valid
    h = history(
        op("write", 1, key="x", call=0, ret=1),
        op("write", 2, key="x", out="info", call=2, ret=3),
        op("read", key="x", result=3, call=4, ret=5),
    )
    assert not check_register(h)


def test_register_unknown_when_budget_runs_out() -> None:
    # ten overlapping writes, then reads of three different values after all of them ended:
    # impossible, but refuting it means trying the writes' orders (thousands of steps)
    h = history(
        *(op("write", i, key="x", call=0, ret=100) for i in range(10)),
        *(op("read", key="x", result=i, call=101 + 2 * i, ret=102 + 2 * i) for i in range(3)),
    )
    assert check_register(h, max_steps=10).validity is Validity.UNKNOWN
    assert check_register(h, max_steps=1_000_000).validity is Validity.INVALID


# --- bank -------------------------------------------------------------------------------------

ACCOUNTS = ["a", "b", "c"]
INITIAL = {"a": 10, "b": 10, "c": 10}


def transfer(src: str, dst: str, amount: int, **kw: Any) -> Spec:
    return op("transfer", {"from": src, "to": dst, "amount": amount}, **kw)


def bank_read(a: int, b: int, c: int, **kw: Any) -> Spec:
    return op("read", result={"a": a, "b": b, "c": c}, **kw)


def bank(*specs: Spec) -> CheckResult:
    return check_bank(
        ops(*specs),
        accounts=ACCOUNTS,
        total=30,
        initial=INITIAL,
    )


def test_bank_accepts_consistent_reads() -> None:
    r = bank(
        transfer("a", "b", 5, call=0, ret=1),
        bank_read(5, 15, 10, call=2, ret=3),
        transfer("b", "c", 3, call=4, ret=6),
        bank_read(5, 15, 10, call=5, ret=5.5),  # concurrent: may miss it
        bank_read(5, 12, 13, call=7, ret=8),
        transfer("c", "a", 100, out="fail", call=9, ret=10),
        bank_read(5, 12, 13, call=11, ret=12),
    )
    assert r.valid, r.anomalies
    assert r.stats["transfers.fail"] == 1
    assert r.stats["balances.explained"] == 12 and r.stats["balances.skipped"] == 0


def test_bank_rejects_wrong_total_and_negative_and_missing() -> None:
    r = check_bank(
        ops(
            op("read", result={"a": 10, "b": 10, "c": 11}, call=0, ret=1),
            op("read", result={"a": -1, "b": 21, "c": 10}, call=2, ret=3),
            op("read", result={"a": 15, "b": 15}, call=4, ret=5),
        ),
        accounts=ACCOUNTS,
        total=30,
    )
    assert r.kinds() == {"wrong-total", "negative-balance", "wrong-accounts"}
    assert check_bank(
        ops(op("read", result={"a": -1, "b": 21, "c": 10}, call=2, ret=3)),
        accounts=ACCOUNTS,
        total=30,
        allow_negative=True,
    ).valid


def test_bank_rejects_read_missing_acknowledged_transfer() -> None:
    r = bank(transfer("a", "b", 5, call=0, ret=1), bank_read(10, 10, 10, call=2, ret=3))
    assert r.kinds() == {"unexplained-balance"}


def test_bank_skips_balances_with_too_many_possibilities() -> None:
    unknown = [transfer("a", "b", 2**i, out="info", call=0, ret=1) for i in range(8)]
    r = check_bank(
        ops(*unknown, bank_read(10, 10, 10, call=2, ret=3)),
        accounts=ACCOUNTS, total=30, initial=INITIAL, max_sums=100,
    )  # fmt: skip
    assert r.valid and r.stats["balances.skipped"] == 2  # a and b: 256 sums each
    assert r.stats["balances.explained"] == 1


def test_bank_rejects_read_of_failed_transfer() -> None:
    r = bank(transfer("a", "b", 5, out="fail", call=0, ret=1), bank_read(5, 15, 10, call=2, ret=3))
    assert r.kinds() == {"unexplained-balance"}


def test_bank_unknown_transfers_are_possibly_applied() -> None:
    for seen in ((10, 10, 10), (5, 15, 10), (5, 13, 12), (5, 15 - 2, 12)):
        r = bank(
            transfer("a", "b", 5, out="info", call=0, ret=1),
            transfer("b", "c", 2, out="info", call=0, ret=1),
            bank_read(*seen, call=2, ret=3),
        )
        assert r.valid, (seen, r.anomalies)
    r = bank(
        transfer("a", "b", 5, out="info", call=0, ret=1),
        bank_read(7, 13, 10, call=2, ret=3),  # the right total, but no transfer of 3 exists
    )
    assert r.kinds() == {"unexplained-balance"}


# --- set --------------------------------------------------------------------------------------


def test_set_accepts_complete_history() -> None:
    r = check_set(
        history(
            op("add", 1, call=0, ret=1),
            op("add", 2, call=0, ret=2),
            op("read", result=[1, 2], call=3, ret=4),
            op("add", 3, call=5, ret=6),
            op("add", 4, out="info", call=5, ret=6),
            op("add", 5, out="fail", call=5, ret=6),
            op("read", result=[1, 2, 3, 4], call=7, ret=8),
        )
    )
    assert r.valid, r.anomalies
    assert r.stats["lost"] == 0 and r.stats["recovered-unknown"] == 1


def test_set_unknown_insert_may_be_absent() -> None:
    r = check_set(
        history(op("add", 4, out="info", call=0, ret=1), op("read", result=[], call=2, ret=3))
    )
    assert r.valid


def test_set_rejects_lost_insert() -> None:
    r = check_set(
        history(
            op("add", 1, call=0, ret=1),
            op("add", 2, call=0, ret=1),
            op("read", result=[2], call=2, ret=3),
        )
    )
    assert r.kinds() == {"lost"} and r.stats["lost"] == 1


def test_set_rejects_unexpected_and_duplicated() -> None:
    r = check_set(
        history(
            op("add", 1, call=0, ret=1),
            op("add", 2, out="fail", call=0, ret=1),
            op("read", result=[1, 1, 2, 9], call=2, ret=3),
        )
    )
    assert r.kinds() == {"duplicated", "unexpected"}
    assert sum(1 for a in r.anomalies if a.kind == "unexpected") == 2


def test_set_rejects_stale_and_vanished_reads() -> None:
    r = check_set(
        history(
            op("add", 1, call=0, ret=1),
            op("add", 2, out="info", call=0, ret=None),
            op("read", result=[2], call=2, ret=3),  # misses 1 (stale)
            op("read", result=[1], call=4, ret=5),  # 2 vanished after being seen
            op("read", result=[1], call=6, ret=7),
        )
    )
    assert r.kinds() == {"stale", "vanished"}
    assert check_set(
        history(
            op("add", 1, call=0, ret=1),
            op("read", result=[], call=2, ret=3),
            op("read", result=[1], call=4, ret=5),
        ),
        realtime=False,
    ).valid


# --- append (Elle) ----------------------------------------------------------------------------


def txn(*mops: list[object], result: list[list[object]] | None = None, **kw: Any) -> Spec:
    return op("txn", [list(m) for m in mops], result=result, **kw)


def elle(*specs: Spec) -> CheckResult:
    return check_append(ops(*specs))


def test_append_accepts_serializable_history() -> None:
    r = elle(
        txn(["append", "x", 1], call=0, ret=1),
        txn(
            ["r", "x", None],
            ["append", "x", 2],
            result=[["r", "x", [1]], ["append", "x", 2]],
            call=2,
            ret=3,
        ),
        txn(
            ["append", "y", 1],
            ["r", "y", None],
            result=[["append", "y", 1], ["r", "y", [1]]],
            call=2,
            ret=3,
        ),
        txn(["append", "x", 3], out="info", call=4, ret=5),
        txn(["append", "x", 4], out="fail", call=4, ret=5),
        txn(
            ["r", "x", None],
            ["r", "y", None],
            result=[["r", "x", [1, 2, 3]], ["r", "y", [1]]],
            call=6,
            ret=7,
        ),
    )
    assert r.valid, r.anomalies
    assert r.stats["edges"] >= 3


def test_append_rejects_g0_write_cycle() -> None:
    r = elle(
        txn(["append", "x", 1], ["append", "y", 2], call=0, ret=1),
        txn(["append", "x", 2], ["append", "y", 1], call=0, ret=1),
        txn(
            ["r", "x", None],
            ["r", "y", None],
            result=[["r", "x", [1, 2]], ["r", "y", [1, 2]]],
            call=2,
            ret=3,
        ),
    )
    assert "G0" in r.kinds()
    g0 = next(a for a in r.anomalies if a.kind == "G0")
    assert "-ww(" in g0.message and set(g0.events) == {0, 1}


def test_append_g0_includes_possibly_committed_transactions() -> None:
    r = elle(
        txn(["append", "x", 1], ["append", "y", 2], out="info", call=0, ret=1),
        txn(["append", "x", 2], ["append", "y", 1], call=0, ret=1),
        txn(
            ["r", "x", None],
            ["r", "y", None],
            result=[["r", "x", [1, 2]], ["r", "y", [1, 2]]],
            call=2,
            ret=3,
        ),
    )
    assert "G0" in r.kinds()


def test_append_rejects_g1c_circular_information_flow() -> None:
    r = elle(
        txn(
            ["append", "x", 1],
            ["r", "y", None],
            result=[["append", "x", 1], ["r", "y", [1]]],
            call=0,
            ret=1,
        ),
        txn(
            ["append", "y", 1],
            ["r", "x", None],
            result=[["append", "y", 1], ["r", "x", [1]]],
            call=0,
            ret=1,
        ),
    )
    assert r.kinds() == {"G1c"}


def test_append_rejects_g2_write_skew() -> None:
    r = elle(
        txn(
            ["r", "x", None],
            ["append", "y", 1],
            result=[["r", "x", []], ["append", "y", 1]],
            call=0,
            ret=1,
        ),
        txn(
            ["r", "y", None],
            ["append", "x", 1],
            result=[["r", "y", []], ["append", "x", 1]],
            call=0,
            ret=1,
        ),
        txn(
            ["r", "x", None],
            ["r", "y", None],
            result=[["r", "x", [1]], ["r", "y", [1]]],
            call=2,
            ret=3,
        ),
    )
    assert r.kinds() == {"G2"}
    assert "-rw(" in r.anomalies[0].message


def test_append_rejects_aborted_and_intermediate_reads() -> None:
    r = elle(
        txn(["append", "x", 1], out="fail", call=0, ret=1),
        txn(["append", "y", 1], ["append", "y", 2], call=0, ret=1),
        txn(
            ["r", "x", None],
            ["r", "y", None],
            result=[["r", "x", [1]], ["r", "y", [1]]],
            call=2,
            ret=3,
        ),
    )
    assert r.kinds() == {"G1a", "G1b"}


def test_append_rejects_incompatible_orders_and_garbage() -> None:
    r = elle(
        txn(["append", "x", 1], call=0, ret=1),
        txn(["append", "x", 2], call=0, ret=1),
        txn(["r", "x", None], result=[["r", "x", [1, 2]]], call=2, ret=3),
        txn(["r", "x", None], result=[["r", "x", [2, 1]]], call=2, ret=3),
        txn(["r", "z", None], result=[["r", "z", [7, 7]]], call=2, ret=3),
    )
    assert r.kinds() == {"incompatible-order", "garbage-read", "duplicate-elements"}


def test_append_rejects_internal_inconsistency() -> None:
    r = elle(
        txn(
            ["append", "x", 1],
            ["r", "x", None],
            result=[["append", "x", 1], ["r", "x", []]],
            call=0,
            ret=1,
        ),
    )
    assert r.kinds() == {"internal"}


def test_append_realtime_rejects_stale_read() -> None:
    specs = (
        txn(["append", "x", 1], call=0, ret=1),
        txn(["r", "x", None], result=[["r", "x", []]], call=2, ret=3),  # after it: stale
        txn(["r", "x", None], result=[["r", "x", [1]]], call=4, ret=5),
    )
    assert elle(*specs).valid  # serializable: the reader may go first
    r = check_append(ops(*specs), realtime=True)
    assert r.kinds() == {"G2-realtime"}
    assert "-rt->" in r.anomalies[0].message and "-rw('x')->" in r.anomalies[0].message


def test_append_realtime_accepts_concurrent_and_unknown() -> None:
    r = check_append(
        ops(
            txn(["append", "x", 1], call=0, ret=3),
            txn(["r", "x", None], result=[["r", "x", []]], call=1, ret=2),  # concurrent
            txn(["append", "x", 2], out="info", call=4, ret=5),
            txn(["r", "x", None], result=[["r", "x", [1]]], call=6, ret=7),  # 2 not applied
            txn(["r", "x", None], result=[["r", "x", [1, 2]]], call=8, ret=9),  # applied late
        ),
        realtime=True,
    )
    assert r.valid, r.anomalies


def test_verdict_combines_results() -> None:
    good = check_set(history(op("add", 1, call=0, ret=1), op("read", result=[1], call=2, ret=3)))
    bad = check_set(history(op("add", 1, call=0, ret=1), op("read", result=[], call=2, ret=3)))
    assert verdict_json([good])["validity"] == "valid"
    assert verdict_json([good, bad])["validity"] == "invalid"
    assert verdict_json([good, bad])["results"][1]["anomalies"][0]["kind"] == "lost"
