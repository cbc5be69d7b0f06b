"""Build hand-made histories for the checker tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from microtrio.testing._history import Event, EventType, History, Op


@dataclass(frozen=True)
class Spec:
    f: str
    value: Any
    key: Any
    out: str
    result: Any
    call: float
    ret: float | None
    process: int | None
    error: str | None


def op(
    f: str,
    value: Any = None,
    *,
    key: Any = None,
    out: str = "ok",
    result: Any = None,
    call: float = 0.0,
    ret: float | None = 1.0,
    process: int | None = None,
    error: str | None = None,
) -> Spec:
    """One operation; ``out`` is ok/fail/info; ``ret=None`` leaves it without a completion."""
    return Spec(f, value, key, out, result, call, ret, process, error)


def history(*specs: Spec) -> History:
    raw: list[tuple[float, int, EventType, int, Spec]] = []
    for n, s in enumerate(specs):
        proc = n if s.process is None else s.process
        raw.append((s.call, 0, EventType.INVOKE, proc, s))
        if s.ret is not None:
            raw.append((s.ret, 1, EventType(s.out), proc, s))
    raw.sort(key=lambda r: (r[0], r[1]))
    events = []
    for i, (t, _, typ, proc, s) in enumerate(raw):
        value = s.result if typ is EventType.OK else s.value
        error = s.error if typ in (EventType.FAIL, EventType.INFO) else None
        if typ in (EventType.FAIL, EventType.INFO) and error is None:
            error = "test"
        events.append(Event(i, typ, proc, t, s.f, s.key, value, error))
    return History(tuple(events))


def ops(*specs: Spec) -> list[Op]:
    return history(*specs).operations()
