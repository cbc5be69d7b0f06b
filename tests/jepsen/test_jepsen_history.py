"""The history format: pairing, fault windows, JSON lines round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from microtrio._errors import ValidationError
from microtrio.testing._history import (
    NEMESIS,
    Event,
    EventType,
    History,
    Outcome,
    Recorder,
    fault_windows,
    pair_operations,
    read_jsonl,
    write_jsonl,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def recorded() -> History:
    rec = Recorder(FakeClock(), meta={"seed": 42})
    a = rec.invoke(0, "write", "x", 1)
    b = rec.invoke(1, "read", "x")
    n = rec.invoke(NEMESIS, "start", value={"fault": "kill", "id": 0, "detail": ["m1"]})
    rec.ok(n)
    rec.ok(a)
    rec.info(b, "timeout")
    c = rec.invoke(2, "cas", "x", [1, 2])
    rec.fail(c, "cas-mismatch")
    s = rec.invoke(NEMESIS, "stop", value={"fault": "kill", "id": 0})
    rec.ok(s)
    rec.invoke(3, "read", "y")  # never completes
    return rec.history()


def test_recorder_pairs_operations_with_outcomes() -> None:
    ops = recorded().operations()
    assert [(o.process, o.f, o.outcome) for o in ops] == [
        (0, "write", Outcome.OK),
        (1, "read", Outcome.UNKNOWN),
        (2, "cas", Outcome.FAIL),
        (3, "read", Outcome.UNKNOWN),
    ]
    assert ops[0].value == 1  # an ok without a value keeps the invocation's
    assert ops[0].call == 0.5 and ops[0].ret == 2.5
    assert ops[1].ret is None and ops[1].error == "timeout"
    assert ops[2].error == "cas-mismatch" and ops[2].value == [1, 2]
    assert ops[3].complete_index is None


def test_fault_windows_span_start_to_stop() -> None:
    (w,) = fault_windows(recorded())
    assert (w.fault, w.start, w.stop, w.detail) == ("kill", 1.5, 5.0, ["m1"])


def test_unhealed_fault_is_open_window() -> None:
    rec = Recorder(FakeClock())
    rec.ok(rec.invoke(NEMESIS, "start", value={"fault": "pause", "id": 7}))
    (w,) = fault_windows(rec.history())
    assert w.fault == "pause" and w.stop is None


def test_jsonl_round_trip(tmp_path: Path) -> None:
    h = recorded()
    path = tmp_path / "history.jsonl"
    write_jsonl(h, path)
    back = read_jsonl(path)
    assert back == h
    assert back.meta == {"seed": 42}
    lines = path.read_text().splitlines()
    assert len(lines) == len(h) + 1 and '"microtrio-history"' in lines[0]


def test_reader_rejects_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValidationError):
        read_jsonl(path)
    path.write_text('{"format": "microtrio-history", "version": 1}\n{"index": 0}\n')
    with pytest.raises(ValidationError):
        read_jsonl(path)


def ev(i: int, typ: EventType, proc: int, f: str = "read") -> Event:
    return Event(i, typ, proc, float(i), f)


def test_pairing_rejects_malformed_histories() -> None:
    with pytest.raises(ValidationError, match="without an invocation"):
        pair_operations([ev(0, EventType.OK, 0)])
    with pytest.raises(ValidationError, match="in flight"):
        pair_operations([ev(0, EventType.INVOKE, 0), ev(1, EventType.INVOKE, 0)])
    with pytest.raises(ValidationError, match="completes"):
        pair_operations([ev(0, EventType.INVOKE, 0), ev(1, EventType.OK, 0, "write")])
