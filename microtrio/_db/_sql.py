"""SQL passthrough helpers (reference 6.9): statement splitting, results, dump.

Unlike microcluster we split with :func:`apsw.complete`, so semicolons inside
string literals, comments and trigger bodies do not end a statement, and the
whole request runs in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import apsw

from .._errors import (
    BadRequestError,
    ConflictError,
    MicrotrioError,
    UnavailableError,
)

__all__ = [
    "NotReadOnlyError",
    "SQLResult",
    "dump_database",
    "map_sqlite_error",
    "reader_authorizer",
    "run_statements",
    "split_statements",
]


@dataclass(frozen=True)
class SQLResult:
    """One statement's result; :meth:`to_json` gives the wire shape (``SQLResult``)."""

    type: Literal["select", "exec"]
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    rows_affected: int = 0
    #: ``conn.last_insert_rowid()`` after the statement (statement API; not on the wire).
    last_insert_rowid: int = 0

    def to_json(self) -> dict[str, Any]:
        """``{type, columns, rows, rows_affected}``; columns/rows are null for ``exec``."""
        return {
            "type": self.type,
            "columns": list(self.columns) if self.type == "select" else None,
            "rows": [list(r) for r in self.rows] if self.type == "select" else None,
            "rows_affected": self.rows_affected,
        }


def split_statements(query: str) -> list[str]:
    """Split ``query`` into complete statements, keeping quotes, comments and triggers intact.

    Pieces that hold only whitespace, semicolons or comments are dropped; a trailing
    incomplete statement is kept (executing it reports the syntax error).
    """
    statements: list[str] = []
    start = 0
    pos = 0
    while True:
        pos = query.find(";", pos)
        if pos < 0:
            break
        pos += 1
        piece = query[start:pos]
        if apsw.complete(piece):
            _keep(statements, piece)
            start = pos
    _keep(statements, query[start:])
    return statements


def _keep(statements: list[str], piece: str) -> None:
    if _is_blank(piece):
        return
    statements.append(piece.strip())


def _is_blank(piece: str) -> bool:
    """True when ``piece`` holds no SQL tokens (only whitespace, ``;`` and comments)."""
    text = piece
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return False
    return True


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return value


class NotReadOnlyError(Exception):
    """Raised by :func:`run_statements` with ``read_only=True`` before a writing statement."""


#: Pragmas that take an argument but only report: allowed everywhere. Any other pragma
#: with an argument would change a pooled connection's settings (``query_only``,
#: ``foreign_keys``, ``journal_mode``...) and is refused.
QUERY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)


def reader_authorizer(
    code: int, arg1: str | None, arg2: str | None, dbname: str | None, trig: str | None
) -> int:
    """Reader connections: no ATTACH/DETACH, no pragma assignments (``query_only`` stays)."""
    if code in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return apsw.SQLITE_DENY
    if (
        code == apsw.SQLITE_PRAGMA
        and arg2 is not None
        and (arg1 or "").lower() not in QUERY_PRAGMAS
    ):
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def run_statements(
    conn: apsw.Connection, statements: Sequence[str], *, read_only: bool = False
) -> list[SQLResult]:
    """Execute ``statements`` in order on ``conn`` (inside the caller's transaction).

    A statement with result columns (seen on the prepared statement, so
    ``INSERT ... RETURNING`` and ``PRAGMA`` count) gives a ``select`` result with bytes
    turned into text; others an ``exec`` result with the rows they changed. With
    ``read_only``, :class:`NotReadOnlyError` is raised before any statement that is not
    read-only (``sqlite3_stmt_readonly``) runs.
    """
    results: list[SQLResult] = []
    outer_trace = conn.exec_trace
    columns: list[tuple[str, ...]] = []

    def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if read_only and not cursor.is_readonly:
            raise NotReadOnlyError(sql)
        columns.append(tuple(d[0] for d in cursor.get_description()))
        return True if outer_trace is None else bool(outer_trace(cursor, sql, bindings))

    for statement in statements:
        columns.clear()
        before = conn.total_changes()
        cursor = conn.cursor()
        cursor.exec_trace = trace
        rows = [tuple(_text(v) for v in row) for row in cursor.execute(statement)]
        cols = columns[-1] if columns else ()
        if cols:
            results.append(SQLResult("select", columns=cols, rows=tuple(rows)))
        else:
            changed = conn.changes() if conn.total_changes() != before else 0
            results.append(SQLResult("exec", rows_affected=changed))
    return results


def map_sqlite_error(exc: apsw.Error) -> MicrotrioError:
    """Map an APSW error to our tree; the message is SQLite's."""
    message = str(exc)
    if isinstance(exc, apsw.ConstraintError) and (
        "UNIQUE constraint" in message or "PRIMARY KEY" in message
    ):
        return ConflictError(message)
    if isinstance(exc, _CLIENT_ERRORS):
        return BadRequestError(message)
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return UnavailableError(message)
    return MicrotrioError(message)


_CLIENT_ERRORS = (
    apsw.SQLError,
    apsw.ConstraintError,
    apsw.AuthError,
    apsw.MismatchError,
    apsw.RangeError,
    apsw.TooBigError,
    apsw.ReadOnlyError,
    apsw.ExecTraceAbort,
    apsw.BindingsError,
    apsw.IncompleteExecutionError,
)


def quote_value(value: Any) -> str:
    """An SQL literal for ``value`` (as sqlite3's ``.dump`` writes it)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "NULL"
        if value in (float("inf"), float("-inf")):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex().upper() + "'"
    return "'" + str(value).replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def dump_database(conn: apsw.Connection, *, schema_only: bool, skip: frozenset[str]) -> str:
    """SQL text like sqlite3's ``.dump`` (schema, then rows); tables in ``skip`` are left out."""
    out = ["PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;"]
    objects = list(
        conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema "
            "WHERE sql IS NOT NULL ORDER BY rowid"
        )
    )
    for kind, name, _tbl, sql in objects:
        if kind != "table" or name in skip or name.startswith("sqlite_"):
            continue
        out.append(f"{sql};")
        if schema_only:
            continue
        for row in conn.execute(f"SELECT * FROM {quote_ident(name)}"):
            values = ",".join(quote_value(v) for v in row)
            out.append(f"INSERT INTO {quote_ident(name)} VALUES({values});")
    if not schema_only and conn.table_exists("main", "sqlite_sequence"):
        seqs = list(conn.execute("SELECT name, seq FROM sqlite_sequence"))
        if seqs:
            out.append("DELETE FROM sqlite_sequence;")
            for name, seq in seqs:
                out.append(f"INSERT INTO sqlite_sequence VALUES({quote_value(name)},{seq});")
    for kind, _name, tbl, sql in objects:
        if kind in ("index", "trigger", "view") and tbl not in skip:
            out.append(f"{sql};")
    out.append("COMMIT;")
    return "\n".join(out) + "\n"
