"""Checkers for the histories of fault-injection runs (see :mod:`._history` for the shapes).

Theory of operation
-------------------

Every checker takes the paired operations of a history (:func:`._history.pair_operations`)
and returns a :class:`CheckResult`: valid, invalid (with :class:`Anomaly` witnesses that name
the events involved) or unknown (a search ran out of budget). An operation whose outcome is
unknown (``info``) counts as possibly applied, at any time after its invocation; a ``fail``ed
one as certainly not applied.

* :func:`check_register`: each key is a read/write/compare-and-set register; the history must
  be linearizable (the Wing-Gong search of :mod:`._linearizability`, per key).
* :func:`check_bank`: transfers between accounts keep the total; every read must see all
  accounts, the right total and (unless allowed) no negative balance. With the initial
  balances and real-time order (reads are linearizable by default), each balance must also be
  explainable: the initial balance, plus every transfer acknowledged before the read was
  invoked, plus some subset of the transfers that may have happened concurrently.
* :func:`check_set`: every acknowledged insert is present in the final read (else *lost*),
  nothing appears that was never inserted or whose insert failed (*unexpected*), nothing twice
  (*duplicated*); with real-time order, an earlier read invoked after an insert was
  acknowledged must contain it (*stale*), and an element seen once must not vanish later.
* :func:`check_append`: Elle's list-append analysis (Kingsbury & Alvaro, VLDB 2020). Appended
  values are unique per key, so a read of a list names the transactions that wrote each of
  its elements, in order. All reads of a key must be prefixes of one another (else
  *incompatible-order*); the longest is the key's version order. Reads of aborted writes are
  G1a, reads ending at a transaction's non-final append to a key are G1b. Then the dependency
  graph between committed (and observed unknown) transactions: ``ww`` from the writer of each
  version to the writer of the next, ``wr`` from the writer of the last element a transaction
  read to the reader, ``rw`` from a reader to the writer of the version after the one it read.
  A cycle of ``ww`` edges is G0, one of ``ww``/``wr`` edges (with a ``wr``) is G1c, one with an
  ``rw`` anti-dependency is G2. Cycles are found per strongly connected component,
  and each is reported with a shortest witness.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from ._history import CAS_MISMATCH, History, Op
from ._linearizability import (
    Cas,
    Operation,
    Read,
    RegisterModel,
    Verdict,
    Write,
    check_linearizability,
)
from ._report import Anomaly, CheckResult, Validity, verdict_json

__all__ = [
    "Anomaly",
    "CheckResult",
    "Validity",
    "check_append",
    "check_bank",
    "check_register",
    "check_set",
    "verdict_json",
]

_MAX_WITNESSES: Final = 20  # anomalies reported per kind; the count is in the stats


class _Collector:
    """Gathers anomalies, keeping at most a few witnesses of each kind but counting all."""

    def __init__(self) -> None:
        self.anomalies: list[Anomaly] = []
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, message: str, *events: int | None) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _MAX_WITNESSES:
            self.anomalies.append(Anomaly(kind, message, tuple(e for e in events if e is not None)))

    def result(self, checker: str, stats: dict[str, int]) -> CheckResult:
        stats = {**stats, **{f"anomalies.{k}": v for k, v in sorted(self.counts.items())}}
        validity = Validity.INVALID if self.anomalies else Validity.VALID
        return CheckResult(checker, validity, tuple(self.anomalies), stats)


def _ops(history: History | Iterable[Op]) -> list[Op]:
    if isinstance(history, History):
        return history.operations()
    return list(history)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


# --- register -------------------------------------------------------------------------------


def _register_operation(op: Op) -> Operation | None:
    ret = op.ret
    if op.f == "read":
        if not op.ok:
            return None  # a failed or unanswered read constrains nothing
        return Operation(op.call, ret, Read(), _freeze(op.value), _freeze(op.key), op.process)
    if op.f == "write":
        if op.failed:
            return None
        return Operation(op.call, ret, Write(_freeze(op.input)), None, _freeze(op.key), op.process)
    if op.f == "cas":
        old, new = op.input
        inp = Cas(_freeze(old), _freeze(new))
        if op.failed:
            if op.error != CAS_MISMATCH:
                return None
            return Operation(op.call, ret, inp, False, _freeze(op.key), op.process)
        return Operation(op.call, ret, inp, True if op.ok else None, _freeze(op.key), op.process)
    return None


def check_register(
    history: History | Iterable[Op], *, initial: Hashable = None, max_steps: int = 1_000_000
) -> CheckResult:
    """Per-key linearizability of read/write/cas operations (other ``f`` are ignored)."""
    ops = [o for o in map(_register_operation, _ops(history)) if o is not None]
    res = check_linearizability(ops, RegisterModel(initial), max_steps=max_steps)
    stats = {"operations": len(ops), "steps": res.steps}
    if res.verdict is Verdict.OK:
        return CheckResult("register", Validity.VALID, (), stats)
    kind = "nonlinearizable" if res.verdict is Verdict.ILLEGAL else "budget-exhausted"
    validity = Validity.INVALID if res.verdict is Verdict.ILLEGAL else Validity.UNKNOWN
    return CheckResult("register", validity, (Anomaly(kind, res.explanation),), stats)


# --- bank -----------------------------------------------------------------------------------


def _transfer(op: Op) -> tuple[str, str, int] | None:
    v = op.input
    if not isinstance(v, dict):
        return None
    try:
        return str(v["from"]), str(v["to"]), int(v["amount"])
    except (KeyError, TypeError, ValueError):
        return None


def _subset_sums(deltas: list[int], limit: int) -> set[int] | None:
    sums = {0}
    for d in deltas:
        sums |= {s + d for s in sums}
        if len(sums) > limit:
            return None  # too many to enumerate: do not judge
    return sums


def check_bank(
    history: History | Iterable[Op],
    *,
    accounts: Sequence[str],
    total: int,
    initial: Mapping[str, int] | None = None,
    allow_negative: bool = False,
    realtime: bool = True,
    max_sums: int = 4096,
) -> CheckResult:
    """The bank invariant on every read (see the module docstring)."""
    ops = _ops(history)
    transfers = [(o, tr) for o in ops if o.f == "transfer" and (tr := _transfer(o)) is not None]
    reads = [o for o in ops if o.f == "read" and o.ok]
    names = set(accounts)
    out = _Collector()
    explained = {True: 0, False: 0}
    for r in reads:
        if not isinstance(r.value, dict):
            out.add("malformed-read", f"read returned {r.value!r}", r.complete_index)
            continue
        bal = {str(k): v for k, v in r.value.items()}
        if set(bal) != names:
            missing = sorted(names - set(bal))
            extra = sorted(set(bal) - names)
            out.add(
                "wrong-accounts", f"read misses {missing} / has extra {extra}", r.complete_index
            )
        seen_total = sum(int(v) for v in bal.values())
        if seen_total != total:
            out.add(
                "wrong-total", f"read totals {seen_total}, not {total}: {bal}", r.complete_index
            )
        neg = {k: v for k, v in bal.items() if int(v) < 0}
        if neg and not allow_negative:
            out.add("negative-balance", f"negative balances {neg}", r.complete_index)
        if initial is None or not realtime or r.ret is None:
            continue
        for acct in sorted(names & set(bal)):
            known = initial.get(acct, 0)
            maybe: list[int] = []
            for t, (src, dst, amount) in transfers:
                delta = (amount if dst == acct else 0) - (amount if src == acct else 0)
                if delta == 0 or t.failed or t.call > r.ret:
                    continue
                if t.ok and t.ret is not None and t.ret < r.call:
                    known += delta  # acknowledged before the read began: must be visible
                else:
                    maybe.append(delta)
            sums = _subset_sums(maybe, max_sums)
            explained[sums is not None] += 1
            if sums is not None and int(bal[acct]) - known not in sums:
                out.add(
                    "unexplained-balance",
                    f"{acct} = {bal[acct]}: no set of the {len(maybe)} concurrent or unknown "
                    f"transfers explains it on top of {known}",
                    r.complete_index,
                )
    stats = {
        "reads": len(reads),
        "transfers.ok": sum(1 for t, _ in transfers if t.ok),
        "transfers.fail": sum(1 for t, _ in transfers if t.failed),
        "transfers.unknown": sum(1 for t, _ in transfers if t.unknown),
        # balances checked against the transfers, and those skipped (too many possibilities)
        "balances.explained": explained[True],
        "balances.skipped": explained[False],
    }
    return out.result("bank", stats)


# --- set ------------------------------------------------------------------------------------


def check_set(history: History | Iterable[Op], *, realtime: bool = True) -> CheckResult:
    """Lost, unexpected and duplicated elements of a grow-only set (see the module docstring)."""
    ops = _ops(history)
    adds: dict[Hashable, list[Op]] = defaultdict(list)
    for o in ops:
        if o.f == "add":
            adds[_freeze(o.input)].append(o)
    reads = sorted((o for o in ops if o.f == "read" and o.ok), key=lambda o: o.ret or 0.0)
    out = _Collector()
    contents: list[tuple[Op, set[Hashable]]] = []
    for r in reads:
        elems = [_freeze(v) for v in (r.value if isinstance(r.value, list) else [])]
        seen: set[Hashable] = set()
        for e in elems:
            if e in seen:
                out.add("duplicated", f"{e!r} appears more than once in a read", r.complete_index)
            seen.add(e)
            attempts = adds.get(e, [])
            if not attempts:
                out.add("unexpected", f"{e!r} was read but never inserted", r.complete_index)
            elif all(a.failed for a in attempts):
                out.add(
                    "unexpected",
                    f"{e!r} was read but its insert failed",
                    r.complete_index,
                    attempts[0].complete_index,
                )
        contents.append((r, seen))
    acked = {
        e: min(a.ret for a in ops_ if a.ok and a.ret is not None)
        for e, ops_ in adds.items()
        if any(a.ok for a in ops_)
    }
    lost = recovered = 0
    if contents:
        final, final_seen = contents[-1]
        for e, ack in sorted(acked.items(), key=lambda kv: kv[1]):
            if ack < final.call and e not in final_seen:
                lost += 1
                out.add(
                    "lost",
                    f"acknowledged insert of {e!r} missing from the final read",
                    final.complete_index,
                )
        recovered = sum(
            1
            for e, ops_ in adds.items()
            if e not in acked and e in final_seen and any(a.unknown for a in ops_)
        )
    if realtime:
        _set_realtime(contents, acked, out)
    stats = {
        "attempted": len(adds),
        "acknowledged": len(acked),
        "lost": lost,
        "recovered-unknown": recovered,
        "reads": len(reads),
    }
    return out.result("set", stats)


def _set_realtime(
    contents: list[tuple[Op, set[Hashable]]], acked: dict[Hashable, float], out: _Collector
) -> None:
    # Non-final reads must include inserts acknowledged before they began, and keep what a
    # read that ended before they began saw.
    first_seen: dict[Hashable, float] = {}
    for r, seen in contents[:-1]:
        for e, ack in acked.items():
            if ack < r.call and e not in seen:
                out.add(
                    "stale",
                    f"{e!r} acknowledged at {ack:g} but missing from a later read",
                    r.complete_index,
                )
    for r, seen in contents:
        for e, t in first_seen.items():
            if t < r.call and e not in seen and e not in acked:
                out.add(
                    "vanished", f"{e!r} was read at {t:g} and is missing later", r.complete_index
                )
        for e in seen:
            if r.ret is not None:
                first_seen[e] = min(first_seen.get(e, r.ret), r.ret)


# --- append transactions (Elle) -------------------------------------------------------------

_KIND_EDGES: Final = (
    ("G0", frozenset({"ww"}), "ww"),
    ("G1c", frozenset({"ww", "wr"}), "wr"),
    ("G2", frozenset({"ww", "wr", "rw"}), "rw"),
    ("realtime", frozenset({"ww", "wr", "rw", "rt"}), "rt"),  # named by its witness
)


def _mops(op: Op) -> list[tuple[str, Hashable, Any]]:
    result = []
    for m in op.value if isinstance(op.value, list) else []:
        if isinstance(m, list | tuple) and len(m) == 3 and m[0] in ("append", "r"):
            result.append((str(m[0]), _freeze(m[1]), m[2]))
    return result


def check_append(history: History | Iterable[Op], *, realtime: bool = False) -> CheckResult:
    """Elle-style analysis of list-append transactions (see the module docstring).

    With ``realtime``, a transaction acknowledged before another was invoked must also
    precede it (strict serializability): cycles that need such an ``rt`` edge are reported
    as ``G0-realtime``, ``G1c-realtime`` or ``G2-realtime``.
    """
    txns = [o for o in _ops(history) if o.f == "txn"]
    out = _Collector()
    writer: dict[tuple[Hashable, Hashable], Op] = {}
    appends: dict[tuple[int, Hashable], list[Hashable]] = defaultdict(list)
    for t in txns:
        for f, k, v in _mops(t):
            if f != "append":
                continue
            v = _freeze(v)
            if (k, v) in writer:
                out.add(
                    "duplicate-append",
                    f"{v!r} appended to {k!r} twice",
                    t.invoke_index,
                    writer[(k, v)].invoke_index,
                )
            writer[(k, v)] = t
            appends[(t.invoke_index, k)].append(v)
    reads: list[tuple[Op, Hashable, tuple[Hashable, ...]]] = []
    for t in txns:
        if t.ok:
            _check_txn_reads(t, writer, appends, reads, out)
    orders = _version_orders(reads, out)
    edges = _dependency_edges(orders, reads, writer)
    if realtime:
        _realtime_edges(txns, edges)
    _find_cycles(edges, out)
    stats = {
        "transactions": len(txns),
        "ok": sum(1 for t in txns if t.ok),
        "unknown": sum(1 for t in txns if t.unknown),
        "fail": sum(1 for t in txns if t.failed),
        "keys": len(orders),
        "edges": sum(len(d) for d in edges.values()),
    }
    return out.result("append", stats)


def _check_txn_reads(
    t: Op,
    writer: dict[tuple[Hashable, Hashable], Op],
    appends: dict[tuple[int, Hashable], list[Hashable]],
    reads: list[tuple[Op, Hashable, tuple[Hashable, ...]]],
    out: _Collector,
) -> None:
    own: dict[Hashable, list[Hashable]] = defaultdict(list)
    for f, k, v in _mops(t):
        if f == "append":
            own[k].append(_freeze(v))
            continue
        if not isinstance(v, list | tuple):
            out.add("malformed-read", f"read of {k!r} returned {v!r}", t.complete_index)
            continue
        seen = tuple(_freeze(x) for x in v)
        if len(set(seen)) != len(seen):
            out.add(
                "duplicate-elements",
                f"read of {k!r} has duplicates: {list(seen)}",
                t.complete_index,
            )
        if own[k] and list(seen[-len(own[k]) :]) != own[k]:
            out.add(
                "internal",
                f"read of {k!r} = {list(seen)} misses the transaction's own appends {own[k]}",
                t.complete_index,
            )
        for x in seen:
            w = writer.get((k, x))
            if w is None:
                out.add(
                    "garbage-read", f"{x!r} read from {k!r} was never appended", t.complete_index
                )
            elif w.failed:
                out.add(
                    "G1a",
                    f"read {x!r} of {k!r}, written by an aborted transaction",
                    t.complete_index,
                    w.complete_index,
                )
        if seen and (w := writer.get((k, seen[-1]))) is not None and w is not t and not w.failed:
            mine = appends[(w.invoke_index, k)]
            if mine and mine[-1] != seen[-1]:
                out.add(
                    "G1b",
                    f"read of {k!r} ends at {seen[-1]!r}, an intermediate append of "
                    f"a transaction that later appended {mine[-1]!r}",
                    t.complete_index,
                    w.invoke_index,
                )
        reads.append((t, k, seen))


def _version_orders(
    reads: list[tuple[Op, Hashable, tuple[Hashable, ...]]], out: _Collector
) -> dict[Hashable, tuple[Hashable, ...]]:
    by_key: dict[Hashable, list[tuple[Op, tuple[Hashable, ...]]]] = defaultdict(list)
    for t, k, seen in reads:
        by_key[k].append((t, seen))
    orders: dict[Hashable, tuple[Hashable, ...]] = {}
    for k, rs in by_key.items():
        longest_t, longest = max(rs, key=lambda r: len(r[1]))
        bad = [(t, s) for t, s in rs if longest[: len(s)] != s]
        for t, s in bad:
            out.add(
                "incompatible-order",
                f"reads of {k!r} disagree: {list(s)} is not a prefix of {list(longest)}",
                t.complete_index,
                longest_t.complete_index,
            )
        if not bad:
            orders[k] = longest
    return orders


Edges = dict[int, dict[int, dict[str, Hashable]]]  # src -> dst -> edge type -> a key


def _dependency_edges(
    orders: dict[Hashable, tuple[Hashable, ...]],
    reads: list[tuple[Op, Hashable, tuple[Hashable, ...]]],
    writer: dict[tuple[Hashable, Hashable], Op],
) -> Edges:
    edges: Edges = defaultdict(lambda: defaultdict(dict))

    def add(a: Op | None, b: Op | None, kind: str, key: Hashable) -> None:
        if a is None or b is None or a is b or a.failed or b.failed:
            return
        edges[a.invoke_index][b.invoke_index].setdefault(kind, key)

    for k, order in orders.items():
        for x, y in zip(order, order[1:], strict=False):
            add(writer.get((k, x)), writer.get((k, y)), "ww", k)
    for t, k, seen in reads:
        known = orders.get(k)
        if known is None:
            continue
        if seen:
            add(writer.get((k, seen[-1])), t, "wr", k)
        if len(known) > len(seen):
            add(t, writer.get((k, known[len(seen)])), "rw", k)
    return edges


def _sccs(nodes: Iterable[int], succ: Mapping[int, list[int]]) -> list[list[int]]:
    """Strongly connected components of two or more nodes (Kosaraju, iteratively)."""
    order: list[int] = []  # nodes by finishing time of a depth-first search
    seen: set[int] = set()
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(succ.get(root, ())))]
        while stack:
            v, it = stack[-1]
            w = next((w for w in it if w not in seen), None)
            if w is None:
                stack.pop()
                order.append(v)
            else:
                seen.add(w)
                stack.append((w, iter(succ.get(w, ()))))
    pred: dict[int, list[int]] = defaultdict(list)
    for v, ws in succ.items():
        for w in ws:
            pred[w].append(v)
    comps: list[list[int]] = []
    assigned: set[int] = set()
    for root in reversed(order):  # each search of the reversed graph is one component
        if root in assigned:
            continue
        assigned.add(root)
        comp, todo = [], [root]
        while todo:
            v = todo.pop()
            comp.append(v)
            for w in pred[v]:
                if w not in assigned:
                    assigned.add(w)
                    todo.append(w)
        if len(comp) > 1:
            comps.append(comp)
    return comps


def _realtime_edges(txns: list[Op], edges: Edges) -> None:
    # Elle's construction: the frontier holds the completed transactions not yet known to
    # precede a later completed one; each invocation gets an edge from every one of them.
    timeline = sorted(
        [(t.call, 0, i) for i, t in enumerate(txns) if not t.failed]
        + [(t.ret, 1, i) for i, t in enumerate(txns) if t.ok and t.ret is not None]
    )  # at equal times invocations come first: no edge, the safe side
    frontier: set[int] = set()
    preds: dict[int, frozenset[int]] = {}
    for _, completes, i in timeline:
        if completes:
            frontier -= preds.get(i, frozenset())
            frontier.add(i)
        else:
            preds[i] = frozenset(frontier)
            for f in frontier:
                edges[txns[f].invoke_index][txns[i].invoke_index].setdefault("rt", None)


def _find_cycles(edges: Edges, out: _Collector) -> None:
    for kind, allowed, needed in _KIND_EDGES:
        succ = {
            a: [b for b, types in bs.items() if set(types) & allowed] for a, bs in edges.items()
        }
        for comp in _sccs(sorted(succ), succ):
            members = set(comp)
            start = next(
                ((a, b) for a in sorted(comp) for b in succ[a]
                 if b in members and needed in edges[a][b]),
                None,
            )  # fmt: skip
            if start is None:
                continue  # the component's cycles belong to a weaker kind
            cycle = [start[0], *_shortest_path(start[1], start[0], succ, members)]
            text, used = _describe_cycle(cycle, edges, allowed)
            if kind == "realtime":
                kind_ = "G2" if "rw" in used else "G1c" if "wr" in used else "G0"
                out.add(f"{kind_}-realtime", text, *cycle)
            else:
                out.add(kind, text, *cycle)


def _shortest_path(
    src: int, dst: int, succ: Mapping[int, list[int]], within: set[int]
) -> list[int]:
    prev: dict[int, int] = {src: src}
    queue = deque([src])
    while queue:
        v = queue.popleft()
        if v == dst:
            break
        for w in succ.get(v, ()):
            if w in within and w not in prev:
                prev[w] = v
                queue.append(w)
    path = [dst]
    while path[-1] != src:
        path.append(prev[path[-1]])
    return path[::-1]


def _describe_cycle(
    cycle: list[int], edges: Edges, allowed: frozenset[str]
) -> tuple[str, set[str]]:
    parts = []
    used: set[str] = set()
    for a, b in zip(cycle, cycle[1:], strict=False):
        types = {t: k for t, k in edges[a][b].items() if t in allowed}
        t = next(t for t in ("rw", "wr", "ww", "rt") if t in types)
        used.add(t)
        parts.append(f"T{a} -{t}->" if types[t] is None else f"T{a} -{t}({types[t]!r})->")
    return "cycle: " + " ".join(parts) + f" T{cycle[-1]}", used
