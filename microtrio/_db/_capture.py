"""Running a batch of client transactions and capturing their physical effect.

Theory of operation (DESIGN.md section 3). The single writer runs a batch on the
writer connection::

    BEGIN IMMEDIATE                                        -- one session records
      SAVEPOINT txn; fn1(conn); RELEASE txn                -- or ROLLBACK TO on error
      SAVEPOINT txn; fn2(conn); RELEASE txn
      ...
    <capture>; ROLLBACK                                    -- nothing stays local

or, with ``keep=True`` (the writer's usual call), leaves the transaction open when
what it holds is exactly what every member will apply (no temp objects, no writes to
tables the capture skips, no ANALYZE): the :class:`~._apply.Applier` then commits it
when the entry is applied, instead of applying the captured changesets a second time
on the member that ran it.

An SQLite session (rowid tables included) records the row changes of the batch's
client functions one after the other; a changeset compares each changed row as it is
now with its value before the first change, so a function rolled back to its savepoint
leaves nothing in it (see :func:`execute_batch` for the one case that needs a second
run). Schema statements are found with the authorizer (called when a
statement is prepared; the writer has no statement cache, so every execution is
prepared) and the exec trace (called just before the prepared statement runs):
before a schema statement the current session's changeset is closed off, the
statement's text is kept, and a new session starts at the next statement. A
schema statement counts only if the schema cookie moved, so a failing one that the
function swallowed is not replicated. ``sqlite_sequence`` (not recorded by sessions)
is compared after each transaction. ``PRAGMA user_version = N`` (and
``application_id``) is replicated as text; ``CREATE TABLE ... AS SELECT`` is refused
(its rows would be recomputed on each member). The ordered list of effects becomes one
:class:`~microtrio._db._payload.WriteBatch`, applied later by every member.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from ._apply import read_applied, rollback
from ._payload import Op, OpKind, WriteBatch
from ._sql import QUERY_PRAGMAS

__all__ = [
    "BUDGET_EVERY",
    "PRIVATE_TABLES",
    "StepBudget",
    "TxnOutcome",
    "drain",
    "execute_batch",
    "rollback",
]

logger = logging.getLogger("microtrio.db")

#: Tables never captured nor dumped: our bookkeeping, and SQLite's own.
PRIVATE_TABLES = frozenset({"microtrio_applied"})

_DDL_CODES = frozenset(
    {
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TABLE,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_VIEW,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_DROP_TRIGGER,
        apsw.SQLITE_DROP_VIEW,
        apsw.SQLITE_ALTER_TABLE,
        apsw.SQLITE_CREATE_VTABLE,
        apsw.SQLITE_DROP_VTABLE,
    }
)
_DENIED_CODES = frozenset({apsw.SQLITE_TRANSACTION, apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH})
#: Pragmas that change the database file itself: their text is replicated.
_REPLICATED_PRAGMAS = frozenset({"user_version", "application_id"})
#: Pragma assignments that last only for the transaction: allowed.
_TRANSACTION_PRAGMAS = frozenset({"defer_foreign_keys"})
_SAVEPOINT = "microtrio_txn"
_ROW_WRITES = frozenset({apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE})
#: SQLite's tables that a replicated effect may write on the member that runs it: the
#: schema (replicated as statement text), sequences (as a SEQUENCE op), statistics only
#: as a side effect of a schema statement (DROP TABLE; ANALYZE is not replicated).
_SCHEMA_SIDE_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_sequence"})
#: The authorizer codes the recorder looks at (the others, reads first, pass at once).
_WATCHED_CODES = (
    _DENIED_CODES
    | _ROW_WRITES
    | _DDL_CODES
    | frozenset({apsw.SQLITE_ANALYZE, apsw.SQLITE_SELECT, apsw.SQLITE_PRAGMA})
)


@dataclass(frozen=True, slots=True)
class TxnOutcome:
    """A client transaction's result, or the exception it raised (then it left no effect)."""

    value: Any = None
    error: Exception | None = None


def captured_table(name: str) -> bool:
    return name not in PRIVATE_TABLES and not name.startswith("sqlite_")


class _Recorder:
    """Hooks installed on the writer connection while one client transaction runs."""

    def __init__(self, conn: apsw.Connection, carried: apsw.Session | None = None) -> None:
        self._conn = conn
        self._muted = False
        self._ddl_code: int | None = None
        self._select_after_ddl = False
        self._pragma_seen = False
        #: The batch's session: carried over from its earlier transactions (their row
        #: changes are in it), or started at this transaction's first statement.
        self._session = carried
        self._carried = carried
        self._pending: tuple[str, int] | None = None
        self.ops: list[Op] = []
        #: The transaction changed something no member but this one would see (a temp
        #: table, a table the capture skips, statistics): it must not be kept.
        self.local_effects = False
        #: A schema statement (or replicated pragma) ran: it closed off the session.
        self.schema_seen = False
        #: ... and the changeset it closed off held earlier transactions' changes too,
        #: so this transaction's own changes cannot be taken out of it on failure.
        self.mixed = False

    # -- hooks -------------------------------------------------------------------
    def authorizer(
        self, code: int, arg1: str | None, arg2: str | None, dbname: str | None, trig: str | None
    ) -> int:
        if self._muted or code not in _WATCHED_CODES:
            return apsw.SQLITE_OK  # most calls: column reads, functions
        if code in _DENIED_CODES:
            return apsw.SQLITE_DENY
        if code in _ROW_WRITES:
            if not _replicated_write(arg1 or "", dbname, self._ddl_code is not None):
                self.local_effects = True
        elif code == apsw.SQLITE_ANALYZE:
            self.local_effects = True
        if code in _DDL_CODES and trig is None and "temp" not in (dbname, arg1):
            self._ddl_code = code
            self._select_after_ddl = False
        elif code == apsw.SQLITE_SELECT and self._ddl_code is not None:
            self._select_after_ddl = True
        elif code == apsw.SQLITE_PRAGMA and arg2 is not None:
            name = (arg1 or "").lower()
            if name in _REPLICATED_PRAGMAS and dbname in (None, "main"):
                self._pragma_seen = True
            elif name not in _TRANSACTION_PRAGMAS and name not in QUERY_PRAGMAS:
                return apsw.SQLITE_DENY  # would change the writer connection's settings
        return apsw.SQLITE_OK

    def exec_trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if self._muted:
            return True
        self._confirm_pending()
        ddl_code, self._ddl_code = self._ddl_code, None
        ctas, self._select_after_ddl = self._select_after_ddl, False
        pragma, self._pragma_seen = self._pragma_seen, False
        # flags left over by a statement that failed to prepare must not stick to this one
        keyword = first_keyword(sql)
        if keyword not in ("CREATE", "DROP", "ALTER"):
            ddl_code = None
        if keyword != "PRAGMA":
            pragma = False
        if ddl_code is not None or pragma:
            if bindings:
                raise apsw.SQLError("schema statements with bound parameters are not supported")
            if ddl_code == apsw.SQLITE_CREATE_TABLE and ctas:
                raise apsw.SQLError(
                    "CREATE TABLE ... AS SELECT is not supported in replicated writes: "
                    "create the table, then INSERT ... SELECT"
                )
            self.schema_seen = True
            if self._session is not None and self._session is self._carried:
                self.mixed = not self._session.is_empty
            self._flush_session()
            if pragma:
                self.ops.append(Op(OpKind.SQL, sql.strip().encode("utf-8")))
            else:
                self._pending = (sql.strip(), self._schema_cookie())
        elif self._session is None:
            self._session = self._new_session()
        return True

    # -- helpers -------------------------------------------------------------------
    def _new_session(self) -> apsw.Session:
        session = apsw.Session(self._conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(captured_table)
        session.attach()
        return session

    def _schema_cookie(self) -> int:
        self._muted = True
        try:
            value = self._conn.execute("PRAGMA schema_version").get
        finally:
            self._muted = False
        return int(value)

    def _confirm_pending(self) -> None:
        if self._pending is None:
            return
        sql, cookie = self._pending
        self._pending = None
        if self._schema_cookie() != cookie:
            self.ops.append(Op(OpKind.SQL, sql.encode("utf-8")))

    def _flush_session(self) -> None:
        session, self._session = self._session, None
        self.ops.extend(_closed_off(session))

    def start(self) -> None:
        if self._session is None:
            self._session = self._new_session()

    def finish(self) -> apsw.Session | None:
        """The transaction succeeded: its effects are in :attr:`ops` and in the session
        returned (still recording; the next transaction of the batch carries it on)."""
        self._confirm_pending()
        session, self._session = self._session, None
        return session

    def discard(self) -> apsw.Session | None:
        """The transaction failed and its savepoint was rolled back: forget its ops and
        return the session to carry on with. Its row changes vanish from that session
        with the rollback (a changeset compares the rows as they are now with the values
        recorded before their first change); a session started after a schema statement
        of this transaction is closed instead (the schema it saw was rolled back)."""
        session, self._session = self._session, None
        self.ops.clear()
        if session is not None and self.schema_seen:
            session.close()
            return None
        return session

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _replicated_write(table: str, dbname: str | None, in_ddl: bool) -> bool:
    """Whether a row write to ``table`` reaches every member (captured or replayed)."""
    if dbname not in (None, "main"):
        return False
    if captured_table(table) or table in _SCHEMA_SIDE_TABLES:
        return True
    return in_ddl and table.startswith("sqlite_stat")


def first_keyword(sql: str) -> str:
    """The first SQL keyword of ``sql`` (upper case), skipping whitespace and comments."""
    i, n = 0, len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            j = i
            while j < n and (sql[j].isalpha() or sql[j] == "_"):
                j += 1
            return sql[i:j].upper()
    return ""


def _sequences(conn: apsw.Connection) -> dict[str, int]:
    if not conn.table_exists("main", "sqlite_sequence"):
        return {}
    return {str(n): int(s) for n, s in conn.execute("SELECT name, seq FROM sqlite_sequence")}


class _OverBudget(Exception):
    """A :class:`StepBudget` ran out: the batch stops (SQLite rolled it back)."""


#: Progress-handler granularity of a :class:`StepBudget` (SQLite VM steps; ~5 us here).
BUDGET_EVERY = 1000


class StepBudget:
    """A bound on the SQLite work of client functions run on the event loop.

    Install :meth:`progress` as the connection's progress handler (called every
    :data:`BUDGET_EVERY` virtual-machine steps) and pass the budget to
    :func:`execute_batch`: the statements of client functions (and only those: never the
    savepoint bookkeeping or the final rollback) are interrupted once ``steps`` are spent,
    and :attr:`exceeded` tells the caller to throw the batch's results away and run it
    again where it may take its time (a worker thread). Everything is rolled back anyway.
    """

    __slots__ = ("armed", "exceeded", "left")

    def __init__(self, steps: int) -> None:
        self.left = steps // BUDGET_EVERY
        self.armed = False
        self.exceeded = False

    def progress(self) -> bool:
        if not self.armed:
            return False
        self.left -= 1
        if self.left < 0:
            self.exceeded = True
        return self.exceeded


class _Mixed(Exception):
    """A failed transaction's changes were closed off together with earlier ones (see
    :attr:`_Recorder.mixed`): the batch runs again with a session per transaction."""


def _run_one(
    conn: apsw.Connection,
    fn: Callable[[apsw.Connection], Any],
    seqs: dict[str, int],
    budget: StepBudget | None = None,
    carried: apsw.Session | None = None,
) -> tuple[TxnOutcome, list[Op], bool, apsw.Session | None]:
    """One client transaction in its savepoint: its outcome, its effects, whether it had
    effects that stay local (see :attr:`_Recorder.local_effects`) and the session that
    holds its row changes not yet in those effects (None if there are none)."""
    recorder = _Recorder(conn, carried)
    conn.execute(f"SAVEPOINT {_SAVEPOINT}")
    conn.authorizer = recorder.authorizer
    conn.exec_trace = recorder.exec_trace
    try:
        recorder.start()
        if budget is None:
            value = drain(fn(conn))
        else:
            budget.armed = True
            try:
                value = drain(fn(conn))
            finally:
                budget.armed = False
            if budget.exceeded:
                raise _OverBudget
        session = recorder.finish()
    except Exception as exc:
        conn.exec_trace = None
        conn.authorizer = None
        if budget is not None and budget.exceeded:
            # SQLite rolled the whole transaction back when it interrupted a statement
            recorder.close()
            raise _OverBudget from exc
        conn.execute(f"ROLLBACK TO {_SAVEPOINT}; RELEASE {_SAVEPOINT}")
        session = recorder.discard()
        if recorder.mixed:
            raise _Mixed from exc
        return TxnOutcome(error=exc), [], False, session
    finally:
        conn.exec_trace = None
        conn.authorizer = None
    conn.execute(f"RELEASE {_SAVEPOINT}")
    ops = recorder.ops
    now = _sequences(conn)
    changed = {name: seq for name, seq in now.items() if seqs.get(name) != seq}
    if changed:
        # the row changes before the sequence values, as they happened
        ops.extend(_closed_off(session))
        session = None
        ops.append(Op(OpKind.SEQUENCE, json.dumps(changed, sort_keys=True).encode()))
    seqs.clear()
    seqs.update(now)
    return TxnOutcome(value=value), ops, recorder.local_effects, session


def _closed_off(session: apsw.Session | None) -> list[Op]:
    """The ops of ``session``'s changes (none or one changeset); the session is closed."""
    if session is None:
        return []
    try:
        # is_empty is False after an UPDATE to identical values, whose changeset is
        # empty: such a transaction changed nothing and must not need a commit.
        changeset = b"" if session.is_empty else session.changeset()
    finally:
        session.close()
    return [Op(OpKind.CHANGESET, changeset)] if changeset else []


def execute_batch(
    conn: apsw.Connection,
    fns: Sequence[Callable[[apsw.Connection], Any]],
    budget: StepBudget | None = None,
    *,
    keep: bool = False,
) -> tuple[list[TxnOutcome], WriteBatch]:
    """Run ``fns`` as one batch on ``conn`` (blocking) and roll it all back.

    Returns each transaction's outcome and the captured effects of the successful
    ones, in order, stamped with the state they ran on (``changed_idx``).
    Exceptions of a client function are returned, not raised. With a ``budget`` that
    runs out, the batch stops early and its results are meaningless (see
    :class:`StepBudget`). With ``keep``, a batch that changed something, and nothing
    but what its captured effects replay, stays open (``conn.in_transaction``) for the
    Applier to commit (see the module docstring); anything else is rolled back.

    One session records the row changes of the batch's transactions one after the other
    (a changeset holds a row's net change, and the changes of a transaction rolled back
    to its savepoint are gone from it); it is closed off into a changeset at a schema
    statement, before a change of ``sqlite_sequence`` and at the end. Should a
    transaction fail after a schema statement closed off a changeset that held earlier
    transactions' changes too, the batch runs again with a session per transaction.
    """
    try:
        return _execute_batch(conn, fns, budget, keep=keep, carry=True)
    except _Mixed:
        return _execute_batch(conn, fns, budget, keep=keep, carry=False)


def _execute_batch(
    conn: apsw.Connection,
    fns: Sequence[Callable[[apsw.Connection], Any]],
    budget: StepBudget | None,
    *,
    keep: bool,
    carry: bool,
) -> tuple[list[TxnOutcome], WriteBatch]:
    outcomes: list[TxnOutcome] = []
    ops: list[Op] = []
    local = kept = False
    session: apsw.Session | None = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        base_index = read_applied(conn).changed_index
        seqs = _sequences(conn)
        for fn in fns:
            try:
                outcome, txn_ops, txn_local, session = _run_one(conn, fn, seqs, budget, session)
            except _OverBudget:
                local = True  # meaningless results: never kept
                break
            outcomes.append(outcome)
            ops.extend(txn_ops)
            local = local or txn_local
            if not carry:
                ops.extend(_closed_off(session))
                session = None
        else:
            ops.extend(_closed_off(session))
            session = None
        kept = keep and bool(ops) and not local and not _temp_objects(conn)
    finally:
        if session is not None:
            session.close()
        if not kept:
            rollback(conn)
    return outcomes, WriteBatch(base_index=base_index, ops=tuple(merge_changesets(ops)))


def _temp_objects(conn: apsw.Connection) -> bool:
    """Whether the connection's temp schema holds anything (it would outlive the batch)."""
    return conn.execute("SELECT 1 FROM temp.sqlite_schema LIMIT 1").get is not None


def merge_changesets(ops: Sequence[Op]) -> list[Op]:
    """Adjacent changesets of one batch become one (SQLite's changegroup): applying it is
    applying them in order, but every member then applies one changeset per entry instead
    of one per client transaction. Ops of other kinds (schema statements, sequences) keep
    their place, so a changeset never crosses a schema change."""
    merged: list[Op] = []
    run: list[bytes] = []

    def flush() -> None:
        if len(run) == 1:
            merged.append(Op(OpKind.CHANGESET, run[0]))
        elif run:
            builder = apsw.ChangesetBuilder()  # type: ignore[no-untyped-call]
            try:
                for changeset in run:
                    builder.add(changeset)
                merged.append(Op(OpKind.CHANGESET, builder.output()))
            finally:
                builder.close()
        run.clear()

    for op in ops:
        if op.kind is OpKind.CHANGESET:
            run.append(op.data)
        else:
            flush()
            merged.append(op)
    flush()
    return merged


def drain(value: Any) -> Any:
    """A cursor returned by a transaction function is drained into a list of rows, so that
    no statement stays in progress (it would block the savepoint and the rollback)."""
    if isinstance(value, apsw.Cursor):
        return value.fetchall()
    return value
