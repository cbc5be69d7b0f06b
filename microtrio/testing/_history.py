"""The history of a fault-injection run: what clients and the nemesis did, and when.

Theory of operation
-------------------

A history is a sequence of :class:`Event`. A client *process* (a logical, single-threaded
client: it has at most one operation in flight) records an ``invoke`` event when it starts an
operation and exactly one completion when it ends:

* ``ok``: the operation happened (its ``value`` holds the result, e.g. what a read saw);
* ``fail``: the operation certainly did not happen (a refused write, a compare-and-set whose
  comparison failed: ``error`` is then :data:`CAS_MISMATCH`);
* ``info``: the outcome is unknown (a timeout, a lost connection, a leader that stepped down):
  the operation may have happened, at any time after its invocation, or never. As in Jepsen, a
  process that got ``info`` is considered crashed and must not invoke again; the runner gives
  its worker a fresh process id.

An invocation with no completion at all (the run ended first) counts as ``info``.

Times are seconds on one monotonic clock shared by every recorder of a run (the trio clock of
the runner). The nemesis records its actions with process :data:`NEMESIS`: a fault is an
``invoke``/completion pair with ``f == "start"`` and later one with ``f == "stop"``, both
carrying ``value["fault"]`` (the fault kind) and ``value["id"]`` (pairs start and stop); the
time between the start's invocation and the stop's completion is the fault's window.

Values are plain JSON values, so a history round-trips through JSON lines unchanged (a tuple
becomes a list; keys of objects are strings). The workloads agree on these shapes:

* register: ``read``, ``write`` (value v), ``cas`` (value ``[old, new]``) on a key; an ``ok``
  read's value is the value seen;
* bank: ``transfer`` (value ``{"from": a, "to": b, "amount": n}``) and ``read`` (``ok`` value
  ``{account: balance}``), no key;
* set: ``add`` (value: the element) and ``read`` (``ok`` value: the list of elements), no key;
* append: ``txn`` with Elle's micro-operations ``[["append", k, v], ["r", k, None], ...]``;
  the ``ok`` completion repeats them with each read's list filled in.

The file format is JSON lines: a first line ``{"format": "microtrio-history", "version": 1,
"meta": {...}}`` then one object per event.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from .._errors import ValidationError

__all__ = [
    "CAS_MISMATCH",
    "NEMESIS",
    "Event",
    "EventType",
    "FaultWindow",
    "History",
    "Op",
    "Outcome",
    "Recorder",
    "fault_windows",
    "pair_operations",
    "parse_jsonl",
    "read_jsonl",
    "write_jsonl",
]

#: The process id of the nemesis.
NEMESIS: Final = -1
#: ``error`` of a ``fail``ed compare-and-set whose comparison did not hold.
CAS_MISMATCH: Final = "cas-mismatch"

_FORMAT: Final = "microtrio-history"
_VERSION: Final = 1

JSON = Any  # a JSON value: None, bool, int, float, str, list, dict[str, JSON]


class EventType(enum.StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Outcome(enum.StrEnum):
    """How a paired operation ended."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "info"


@final
@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history. ``index`` is the event's position in its history."""

    index: int
    type: EventType
    process: int
    time: float
    f: str
    key: JSON = None
    value: JSON = None
    error: str | None = None

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "index": self.index,
            "type": self.type.value,
            "process": self.process,
            "time": self.time,
            "f": self.f,
            "key": self.key,
            "value": self.value,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, obj: dict[str, JSON]) -> Event:
        try:
            return cls(
                index=int(obj["index"]),
                type=EventType(obj["type"]),
                process=int(obj["process"]),
                time=float(obj["time"]),
                f=str(obj["f"]),
                key=obj.get("key"),
                value=obj.get("value"),
                error=obj.get("error"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValidationError(f"not a history event: {obj!r}") from exc


@final
@dataclass(frozen=True, slots=True)
class History:
    """An ordered, immutable sequence of events, with free-form run metadata."""

    events: tuple[Event, ...]
    meta: dict[str, JSON] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def client_events(self) -> list[Event]:
        return [e for e in self.events if e.process != NEMESIS]

    def operations(self) -> list[Op]:
        """Client operations, invocation paired with completion (see :func:`pair_operations`)."""
        return pair_operations(self.client_events())


@final
@dataclass(frozen=True, slots=True)
class Op:
    """A client operation: its invocation and how (and when) it completed.

    ``input`` is the invocation's value (what was asked: the value written, the transfer).
    ``value`` is the completion's value when the operation is ``ok`` and the completion
    carries one (what a read saw), otherwise ``input``. ``ret`` is ``None`` when the outcome
    is unknown.
    """

    process: int
    f: str
    key: JSON
    value: JSON
    outcome: Outcome
    call: float
    ret: float | None
    invoke_index: int
    complete_index: int | None
    error: str | None = None
    input: JSON = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAIL

    @property
    def unknown(self) -> bool:
        return self.outcome is Outcome.UNKNOWN


def pair_operations(events: Iterable[Event]) -> list[Op]:
    """Pair each invocation with its process's next completion, in invocation order.

    Raises :class:`ValidationError` on a malformed history: a completion without an
    invocation, a second invocation while one is in flight, or a completion of a different
    ``f``.
    """
    pending: dict[int, Event] = {}
    done: dict[int, Op] = {}
    for ev in events:
        if ev.type is EventType.INVOKE:
            if ev.process in pending:
                raise ValidationError(
                    f"process {ev.process} invokes (event {ev.index}) while event "
                    f"{pending[ev.process].index} is in flight"
                )
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        if inv is None:
            raise ValidationError(f"event {ev.index}: completion without an invocation")
        if inv.f != ev.f:
            raise ValidationError(f"event {ev.index}: completes {ev.f!r} but {inv.f!r} was invoked")
        outcome = Outcome(ev.type.value)
        done[inv.index] = Op(
            process=inv.process,
            f=inv.f,
            key=inv.key,
            value=ev.value if outcome is Outcome.OK and ev.value is not None else inv.value,
            outcome=outcome,
            call=inv.time,
            ret=None if outcome is Outcome.UNKNOWN else ev.time,
            invoke_index=inv.index,
            complete_index=ev.index,
            error=ev.error,
            input=inv.value,
        )
    for inv in pending.values():
        done[inv.index] = Op(
            inv.process, inv.f, inv.key, inv.value, Outcome.UNKNOWN, inv.time, None, inv.index,
            None, None, inv.value,
        )  # fmt: skip
    return [done[i] for i in sorted(done)]


@final
@dataclass(frozen=True, slots=True)
class FaultWindow:
    """When a nemesis fault was in force: from its start's invocation to its stop's end."""

    fault: str
    start: float
    stop: float | None  # None: never healed within the history
    detail: JSON = None


def fault_windows(history: History | Iterable[Event]) -> list[FaultWindow]:
    """The nemesis fault windows of a history, in start order."""
    starts: dict[object, tuple[Event, JSON]] = {}
    stopping: object = None  # the id of the stop in flight (the nemesis runs one at a time)
    windows: list[FaultWindow] = []
    for ev in history:
        if ev.process != NEMESIS:
            continue
        value = ev.value if isinstance(ev.value, dict) else {}
        if ev.type is EventType.INVOKE:
            if ev.f == "start":
                starts[value.get("id")] = (ev, value)
            elif ev.f == "stop":
                stopping = value.get("id")
        elif ev.f == "start":
            ident = value.get("id")
            if ident in starts and "detail" in value:
                starts[ident] = (starts[ident][0], value)
        elif ev.f == "stop":
            ident = value.get("id", stopping)
            if ident in starts:
                st, val = starts.pop(ident)
                windows.append(
                    FaultWindow(str(val.get("fault")), st.time, ev.time, val.get("detail"))
                )
    for st, val in starts.values():
        windows.append(FaultWindow(str(val.get("fault")), st.time, None, val.get("detail")))
    windows.sort(key=lambda w: w.start)
    return windows


@final
class Recorder:
    """Builds a history as a run goes; the clock is injected (the runner's ``trio.current_time``).

    Not thread-safe; every caller is a task of one trio run.
    """

    def __init__(self, clock: Callable[[], float], *, meta: dict[str, JSON] | None = None) -> None:
        self._clock = clock
        self._events: list[Event] = []
        self._meta: dict[str, JSON] = dict(meta or {})

    def _add(
        self,
        type_: EventType,
        process: int,
        f: str,
        key: JSON,
        value: JSON,
        error: str | None,
    ) -> Event:
        ev = Event(len(self._events), type_, process, self._clock(), f, key, value, error)
        self._events.append(ev)
        return ev

    def invoke(self, process: int, f: str, key: JSON = None, value: JSON = None) -> Event:
        return self._add(EventType.INVOKE, process, f, key, value, None)

    def ok(self, invocation: Event, value: JSON = None) -> Event:
        return self._add(
            EventType.OK, invocation.process, invocation.f, invocation.key, value, None
        )

    def fail(self, invocation: Event, error: str) -> Event:
        return self._add(
            EventType.FAIL,
            invocation.process,
            invocation.f,
            invocation.key,
            invocation.value,
            error,
        )

    def info(self, invocation: Event, error: str) -> Event:
        return self._add(
            EventType.INFO,
            invocation.process,
            invocation.f,
            invocation.key,
            invocation.value,
            error,
        )

    def set_meta(self, name: str, value: JSON) -> None:
        self._meta[name] = value

    def history(self) -> History:
        return History(tuple(self._events), dict(self._meta))


# --- JSON lines -----------------------------------------------------------------------------


def _dumps(obj: JSON) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def write_jsonl(history: History, path: Path) -> None:
    """Write ``history`` to ``path`` (blocking: call it in a worker thread from trio code)."""
    with path.open("w", encoding="utf-8") as fh:
        header = {"format": _FORMAT, "version": _VERSION, "meta": history.meta}
        fh.write(_dumps(header) + "\n")
        for ev in history.events:
            fh.write(_dumps(ev.to_json()) + "\n")


def read_jsonl(path: Path) -> History:
    """Read a history written by :func:`write_jsonl` (blocking)."""
    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    return parse_jsonl(lines)


def parse_jsonl(lines: Sequence[str]) -> History:
    if not lines:
        raise ValidationError("empty history file")
    try:
        header = json.loads(lines[0])
        body = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as exc:
        raise ValidationError(f"history is not JSON lines: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValidationError("not a microtrio history (missing header line)")
    if header.get("version") != _VERSION:
        raise ValidationError(f"unsupported history version {header.get('version')!r}")
    events = tuple(Event.from_json(obj) for obj in body)
    for i, ev in enumerate(events):
        if ev.index != i:
            raise ValidationError(f"event {i} has index {ev.index}")
    meta = header.get("meta") or {}
    return History(events, dict(meta))
