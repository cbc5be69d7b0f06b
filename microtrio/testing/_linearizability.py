"""A linearizability checker for recorded client histories.

Theory of operation
-------------------

A history is a list of :class:`Operation`: each was *called* at some time and either
*returned* at a later time with an output, or has an unknown outcome (``ret is None``: the
client gave up, the leader it talked to lost leadership, ...). The history is linearizable
if every operation can be given a single instant between its call and its return such that
applying the operations in that order to a sequential :class:`Model` produces exactly the
recorded outputs. An operation with an unknown outcome may take effect at any instant after
its call, or never, and its output is not checked.

The search is Wing & Gong's, with the memoization of Lowe and of Porcupine: a depth-first
search over "which operation takes effect next". An operation may go next only if no other
pending, completed operation returned before it was called (real-time order). Every
(set of linearized operations, model state) pair is explored at most once, so a history of
``n`` operations costs at most ``2**n`` times the number of model states, and in practice
far less. Linearizability is local (Herlihy & Wing), so a history over many keys is split
by :attr:`Operation.key` and each key is searched on its own.

The search is bounded by a step budget: running out gives :attr:`Verdict.UNKNOWN` rather
than a hang. A rejected history comes with a short explanation: the longest linearizable
prefix found and the operations none of which could take effect after it.

The checker knows nothing of Raft; models for a register, an append-only list and a set are
provided, and any object with the :class:`Model` shape can be plugged in.
"""

from __future__ import annotations

import bisect
import enum
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, final

__all__ = [
    "Add",
    "Append",
    "Cas",
    "LinearizabilityResult",
    "ListModel",
    "Model",
    "Operation",
    "Read",
    "RegisterModel",
    "SetModel",
    "Verdict",
    "Write",
    "check_linearizability",
]


# --- operations -----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Read:
    """Read the whole value of a key (register value, list as a tuple, set as a frozenset)."""


@final
@dataclass(frozen=True, slots=True)
class Write:
    """Overwrite a register; output is ignored (``None`` by convention)."""

    value: Hashable


@final
@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set a register; output is ``True`` if it swapped, ``False`` if not."""

    expected: Hashable
    new: Hashable


@final
@dataclass(frozen=True, slots=True)
class Append:
    """Append a value to a list; output is ignored."""

    value: Hashable


@final
@dataclass(frozen=True, slots=True)
class Add:
    """Add a value to a set; output is ignored."""

    value: Hashable


@final
@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as observed from outside.

    ``call`` and ``ret`` are times on any monotonic scale shared by all clients.
    ``ret is None`` means the outcome is unknown: the operation may have taken effect at
    any time after ``call``, or never, and ``output`` is not checked.
    """

    call: float
    ret: float | None
    input: object
    output: object = None
    key: Hashable = None
    client: Hashable = None

    def __post_init__(self) -> None:
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before its call ({self.call})")


# --- models ---------------------------------------------------------------------------------


class Model(Protocol):
    """A sequential specification. States must be hashable (they are memoized)."""

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(self, state: Any, op: Operation) -> Sequence[Hashable]:
        """The states ``op`` may lead to from ``state``; empty if its output is impossible.

        For an operation with an unknown outcome (``op.ret is None``) the output must be
        ignored; several states are allowed (e.g. a cas that did or did not swap).
        """
        ...

    def is_read_only(self, op: Operation) -> bool:
        """True if ``op`` never changes the state (unknown-outcome reads are then dropped)."""
        ...


@final
@dataclass(frozen=True, slots=True)
class RegisterModel:
    """A read/write/compare-and-set register holding ``initial`` at first."""

    initial: Hashable = None

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Any, op: Operation) -> Sequence[Hashable]:
        inp = op.input
        known = op.ret is not None
        if isinstance(inp, Read):
            return (state,) if not known or op.output == state else ()
        if isinstance(inp, Write):
            return (inp.value,)
        if isinstance(inp, Cas):
            swaps = state == inp.expected
            if not known:
                return (inp.new,) if swaps else (state,)
            if op.output is True:
                return (inp.new,) if swaps else ()
            if op.output is False:
                return () if swaps else (state,)
            return ()
        raise TypeError(f"register model cannot run {inp!r}")

    def is_read_only(self, op: Operation) -> bool:
        return isinstance(op.input, Read)


@final
@dataclass(frozen=True, slots=True)
class ListModel:
    """An append-only list; a read returns the whole list as a tuple."""

    def init(self) -> Hashable:
        return ()

    def step(self, state: Any, op: Operation) -> Sequence[Hashable]:
        inp = op.input
        if isinstance(inp, Read):
            ok = op.ret is None or (
                isinstance(op.output, tuple | list) and tuple(op.output) == state
            )
            return (state,) if ok else ()
        if isinstance(inp, Append):
            return ((*state, inp.value),)
        raise TypeError(f"list model cannot run {inp!r}")

    def is_read_only(self, op: Operation) -> bool:
        return isinstance(op.input, Read)


@final
@dataclass(frozen=True, slots=True)
class SetModel:
    """A grow-only set; a read returns the members (any iterable, compared as a set)."""

    def init(self) -> Hashable:
        return frozenset()

    def step(self, state: Any, op: Operation) -> Sequence[Hashable]:
        inp = op.input
        if isinstance(inp, Read):
            if op.ret is None:
                return (state,)
            out = op.output
            ok = isinstance(out, Iterable) and frozenset(out) == state
            return (state,) if ok else ()
        if isinstance(inp, Add):
            return (state | {inp.value},)
        raise TypeError(f"set model cannot run {inp!r}")

    def is_read_only(self, op: Operation) -> bool:
        return isinstance(op.input, Read)


# --- verdicts -------------------------------------------------------------------------------


class Verdict(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"  # the step budget ran out


@final
@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    verdict: Verdict
    explanation: str = ""
    key: Hashable = None  # the key that failed (or ran out of budget)
    steps: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def __bool__(self) -> bool:
        return self.ok


# --- the search -----------------------------------------------------------------------------

_INF = float("inf")


def check_linearizability(
    history: Iterable[Operation],
    model: Model,
    *,
    max_steps: int = 1_000_000,
) -> LinearizabilityResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    The history is partitioned by :attr:`Operation.key`; ``max_steps`` bounds the total
    number of search steps over all keys (exceeding it yields :attr:`Verdict.UNKNOWN`).
    """
    by_key: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in history:
        if op.ret is None and model.is_read_only(op):
            continue  # an unobserved read constrains nothing
        by_key[op.key].append(op)
    steps = 0
    unknown: LinearizabilityResult | None = None
    for key, ops in by_key.items():
        result = _check_one(ops, model, key, max_steps - steps)
        steps += result.steps
        if result.verdict is Verdict.ILLEGAL:
            return LinearizabilityResult(result.verdict, result.explanation, key, steps)
        if result.verdict is Verdict.UNKNOWN:
            unknown = result
            break
    if unknown is not None:
        return LinearizabilityResult(Verdict.UNKNOWN, unknown.explanation, unknown.key, steps)
    return LinearizabilityResult(Verdict.OK, "", None, steps)


def _check_one(
    ops: list[Operation], model: Model, key: Hashable, budget: int
) -> LinearizabilityResult:
    ops = sorted(ops, key=lambda o: (o.call, _INF if o.ret is None else o.ret))
    n = len(ops)
    calls = [o.call for o in ops]
    rets = [_INF if o.ret is None else o.ret for o in ops]
    required = 0  # bitmask of operations that must be linearized (known outcome)
    for i, o in enumerate(ops):
        if o.ret is not None:
            required |= 1 << i

    by_ret = sorted(range(n), key=lambda i: rets[i])
    # (linearized known-outcome operations, state) -> the sets of unknown-outcome operations
    # it was reached with. Having used more unknown operations only removes options (they
    # return at infinity and never bound the horizon), so a visit is skipped when an earlier
    # visit had used a subset of them: it dominates.
    seen: dict[tuple[int, Hashable], list[int]] = {}
    best_mask = 0
    best_state: Hashable = model.init()
    steps = 0
    # Explicit stack of (mask, state); each frame explores its successors when popped.
    stack: list[tuple[int, Hashable]] = [(0, model.init())]
    seen[(0, model.init())] = [0]
    while stack:
        mask, state = stack.pop()
        steps += 1
        if steps > budget:
            return LinearizabilityResult(
                Verdict.UNKNOWN, f"step budget exhausted on key {key!r}", key, steps
            )
        if mask & required == required:
            return LinearizabilityResult(Verdict.OK, "", key, steps)
        if mask.bit_count() > best_mask.bit_count():
            best_mask, best_state = mask, state
        # The earliest return among pending operations bounds which calls may go next;
        # candidates are then a range of the call-ordered operations.
        horizon = _INF
        for i in by_ret:
            if not mask >> i & 1:
                horizon = rets[i]
                break
        lo = (~mask & (mask + 1)).bit_length() - 1  # lowest operation not linearized
        hi = bisect.bisect_right(calls, horizon)
        # The stack pops last-pushed first: push unknown-outcome candidates first so that
        # they are explored last (paths using fewer of them then dominate, see _first_visit),
        # and known ones in reverse so that the earliest-called is explored first.
        for want_known in (False, True):
            for i in range(hi - 1, lo - 1, -1):
                if mask >> i & 1 or bool(required >> i & 1) is not want_known:
                    continue
                for nxt in model.step(state, ops[i]):
                    item = (mask | 1 << i, nxt)
                    if _first_visit(seen, item[0], required, nxt):
                        stack.append(item)
    return LinearizabilityResult(
        Verdict.ILLEGAL, _explain(ops, model, key, best_mask, best_state), key, steps
    )


def _first_visit(
    seen: dict[tuple[int, Hashable], list[int]], mask: int, required: int, state: Hashable
) -> bool:
    """Record a search node; False if an equal or dominating one was seen before."""
    unknown = mask & ~required
    visits = seen.setdefault((mask & required, state), [])
    for used in visits:
        if used & ~unknown == 0:
            return False
    visits.append(unknown)
    return True


def _describe(op: Operation) -> str:
    ret = "?" if op.ret is None else f"{op.ret:g}"
    out = "" if op.ret is None else f" -> {op.output!r}"
    who = "" if op.client is None else f"client {op.client!r} "
    return f"{who}{op.input!r}{out} [{op.call:g}, {ret}]"


def _explain(ops: list[Operation], model: Model, key: Hashable, mask: int, state: Hashable) -> str:
    done = [ops[i] for i in range(len(ops)) if mask >> i & 1]
    rets = [_INF if o.ret is None else o.ret for o in ops]
    horizon = min((rets[i] for i in range(len(ops)) if not mask >> i & 1), default=_INF)
    stuck = [
        ops[i]
        for i in range(len(ops))
        if not mask >> i & 1 and ops[i].call <= horizon and ops[i].ret is not None
    ]
    lines = [
        f"key {key!r}: not linearizable; longest linearizable prefix has {len(done)} of "
        f"{len(ops)} operations and leaves state {state!r}; none of these can come next:"
    ]
    lines += [f"  {_describe(o)}" for o in stuck[:5]]
    if len(stuck) > 5:
        lines.append(f"  ... and {len(stuck) - 5} more")
    if done:
        lines.append(f"  (latest-called linearized: {_describe(done[-1])})")
    return "\n".join(lines)
