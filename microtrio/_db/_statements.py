"""Statement-level writes: SQL text + parameters that run in the leader's write batch.

dqlite's model (DESIGN.md section 3: "the code stays, the SQL goes"). A call of
:meth:`~microtrio._db.Database.execute_many` is one client transaction made of statements,
each ``(sql, params)``. On the leader it joins the writer's current batch like any other
transaction; on a member that does not lead, the request is encoded here, travels on the
Raft channel to the leader (never pickle), runs there in the leader's batch on the newest
state, and the encoded reply comes back once the leader applied it.

Request, version 1, big-endian::

    magic "MTSQ" | version u8 | flags u8 | count u32
    then per statement: sql (str) | named u8 | n u32 | n x (name (str), if named) value

Reply::

    magic "MTSR" | version u8 | status u8 (0 ok, 1 error)
    ok:    count u32, then per result: type u8 (0 exec, 1 select) | rows_affected i64 |
           last_insert_rowid i64 | ncols u32 | ncols x str | nrows u32 | nrows x ncols x value
    error: code u8 | message (str)

``str`` is ``u32 length | UTF-8``; a value is ``tag u8`` then nothing (0 NULL), i64 (1),
f64 (2), str (3) or ``u32 length | bytes`` (4). Malformed input raises
:class:`~microtrio.BadRequestError` (requests) or :class:`~microtrio.ProtocolError` (replies).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias

import apsw

from .._errors import (
    BadRequestError,
    ConflictError,
    DatabaseNotOpenError,
    MicrotrioError,
    NoLeaderError,
    NotFoundError,
    OutcomeUnknownError,
    ProtocolError,
    TimeoutError_,
    UnavailableError,
    ValidationError,
)
from ._sql import SQLResult, run_statements

__all__ = [
    "FLAG_TEXT_RESULTS",
    "Params",
    "SQLValue",
    "Statement",
    "StatementRequest",
    "decode_reply",
    "decode_request",
    "encode_error_reply",
    "encode_reply",
    "encode_request",
    "normalize_statements",
    "run_request",
]

SQLValue: TypeAlias = None | int | float | str | bytes
Params: TypeAlias = Sequence[SQLValue] | Mapping[str, SQLValue]
Statement: TypeAlias = tuple[str, Params]

#: Results as the SQL passthrough gives them (blobs as text, ``run_statements`` shapes).
FLAG_TEXT_RESULTS: Final = 1

_REQ_MAGIC: Final = b"MTSQ"
_REP_MAGIC: Final = b"MTSR"
_VERSION: Final = 1
_REQ_HEAD: Final = struct.Struct(">4sBBI")
_REP_HEAD: Final = struct.Struct(">4sBB")
_U8: Final = struct.Struct(">B")
_U32: Final = struct.Struct(">I")
_I64: Final = struct.Struct(">q")
_F64: Final = struct.Struct(">d")
_RESULT_HEAD: Final = struct.Struct(">Bqq")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

#: Errors that travel by kind (anything else arrives as a plain MicrotrioError).
_ERRORS: Final[tuple[type[MicrotrioError], ...]] = (
    MicrotrioError,
    BadRequestError,
    ValidationError,
    ConflictError,
    NotFoundError,
    UnavailableError,
    DatabaseNotOpenError,
    NoLeaderError,
    OutcomeUnknownError,
    TimeoutError_,
)


class StatementRequest:
    """Decoded statements plus flags (what the leader runs)."""

    __slots__ = ("flags", "statements")

    def __init__(self, statements: list[Statement], flags: int = 0) -> None:
        self.statements = statements
        self.flags = flags


# -- validation ----------------------------------------------------------------------------


def _check_value(value: Any) -> SQLValue:
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise BadRequestError(f"integer parameter {value} does not fit in 64 bits")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise BadRequestError(f"unsupported SQL parameter type {type(value).__name__}")


def normalize_statements(statements: Sequence[tuple[str, Any]]) -> list[Statement]:
    """Validate ``(sql, params)`` pairs; :class:`BadRequestError` names what is wrong."""
    if isinstance(statements, str | bytes):
        raise BadRequestError("statements must be a sequence of (sql, params) pairs")
    out: list[Statement] = []
    for item in statements:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise BadRequestError("each statement is a (sql, params) pair")
        sql, params = item
        if not isinstance(sql, str) or not sql.strip():
            raise BadRequestError("a statement's SQL must be a non-empty string")
        checked: Params
        if isinstance(params, Mapping):
            checked = {str(k): _check_value(v) for k, v in params.items()}
        elif isinstance(params, str | bytes) or not isinstance(params, Sequence):
            raise BadRequestError("parameters must be a sequence or a mapping")
        else:
            checked = tuple(_check_value(v) for v in params)
        out.append((sql, checked))
    if not out:
        raise BadRequestError("No query provided")
    return out


# -- running (blocking, on the writer connection inside the batch's savepoint) -------------


def run_request(conn: apsw.Connection, request: StatementRequest) -> list[SQLResult]:
    """Run the statements in order (inside the caller's savepoint) and return their results."""
    if request.flags & FLAG_TEXT_RESULTS:
        return run_statements(conn, [sql for sql, _ in request.statements])
    results: list[SQLResult] = []
    outer_trace = conn.exec_trace
    columns: list[tuple[str, ...]] = []

    def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        columns.append(tuple(d[0] for d in cursor.get_description()))
        return True if outer_trace is None else bool(outer_trace(cursor, sql, bindings))

    for sql, params in request.statements:
        columns.clear()
        before = conn.total_changes()
        cursor = conn.cursor()
        cursor.exec_trace = trace
        rows = tuple(tuple(row) for row in cursor.execute(sql, params))
        cols = columns[-1] if columns else ()
        rowid = conn.last_insert_rowid()
        if cols:
            results.append(SQLResult("select", columns=cols, rows=rows, last_insert_rowid=rowid))
        else:
            changed = conn.changes() if conn.total_changes() != before else 0
            results.append(SQLResult("exec", rows_affected=changed, last_insert_rowid=rowid))
    return results


# -- encoding ------------------------------------------------------------------------------


def _put_str(out: list[bytes], text: str) -> None:
    data = text.encode("utf-8")
    out.append(_U32.pack(len(data)))
    out.append(data)


def _put_value(out: list[bytes], value: Any) -> None:
    if value is None:
        out.append(b"\x00")
    elif isinstance(value, bool | int):
        out.append(b"\x01" + _I64.pack(int(value)))
    elif isinstance(value, float):
        out.append(b"\x02" + _F64.pack(value))
    elif isinstance(value, str):
        out.append(b"\x03")
        _put_str(out, value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"\x04" + _U32.pack(len(data)))
        out.append(data)
    else:
        raise BadRequestError(f"unsupported SQL value type {type(value).__name__}")


def encode_request(statements: Sequence[Statement], flags: int = 0) -> bytes:
    out = [_REQ_HEAD.pack(_REQ_MAGIC, _VERSION, flags, len(statements))]
    for sql, params in statements:
        _put_str(out, sql)
        if isinstance(params, Mapping):
            out.append(b"\x01" + _U32.pack(len(params)))
            for name, value in params.items():
                _put_str(out, name)
                _put_value(out, value)
        else:
            out.append(b"\x00" + _U32.pack(len(params)))
            for value in params:
                _put_value(out, value)
    return b"".join(out)


def encode_reply(results: Sequence[SQLResult]) -> bytes:
    out = [_REP_HEAD.pack(_REP_MAGIC, _VERSION, 0), _U32.pack(len(results))]
    for r in results:
        kind = 1 if r.type == "select" else 0
        out.append(_RESULT_HEAD.pack(kind, r.rows_affected, r.last_insert_rowid))
        out.append(_U32.pack(len(r.columns)))
        for col in r.columns:
            _put_str(out, col)
        out.append(_U32.pack(len(r.rows)))
        for row in r.rows:
            if len(row) != len(r.columns):
                raise MicrotrioError("a result row does not match its columns")
            for value in row:
                _put_value(out, value)
    return b"".join(out)


def encode_error_reply(error: BaseException) -> bytes:
    code = 0
    if isinstance(error, MicrotrioError):
        for i, cls in enumerate(_ERRORS):
            if type(error) is cls:
                code = i
                break
        else:
            code = next(i for i, c in reversed(list(enumerate(_ERRORS))) if isinstance(error, c))
    out = [_REP_HEAD.pack(_REP_MAGIC, _VERSION, 1), _U8.pack(code)]
    _put_str(out, str(error) or type(error).__name__)
    return b"".join(out)


# -- decoding ------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("_data", "_error", "pos")

    def __init__(self, data: bytes, error: type[MicrotrioError]) -> None:
        self._data = memoryview(data)
        self._error = error
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self._data):
            raise self._error("truncated statement message")
        view = self._data[self.pos : end]
        self.pos = end
        return view

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))

    def string(self) -> str:
        (n,) = self.unpack(_U32)
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(f"invalid UTF-8 in statement message: {exc}") from exc

    def value(self) -> SQLValue:
        (tag,) = self.unpack(_U8)
        if tag == 0:
            return None
        if tag == 1:
            return int(self.unpack(_I64)[0])
        if tag == 2:
            return float(self.unpack(_F64)[0])
        if tag == 3:
            return self.string()
        if tag == 4:
            (n,) = self.unpack(_U32)
            return bytes(self.take(n))
        raise self._error(f"unknown value tag {tag}")

    def count(self) -> int:
        n = int(self.unpack(_U32)[0])
        if n > len(self._data) - self.pos:  # every item takes at least one byte
            raise self._error("statement message count exceeds its length")
        return n

    def end(self) -> None:
        if self.pos != len(self._data):
            raise self._error("trailing bytes after statement message")


def decode_request(data: bytes) -> StatementRequest:
    r = _Reader(data, BadRequestError)
    magic, version, flags, _ = r.unpack(_REQ_HEAD)
    if magic != _REQ_MAGIC or version != _VERSION:
        raise BadRequestError("not a version-1 statement request")
    r.pos -= _U32.size
    statements: list[Statement] = []
    for _ in range(r.count()):
        sql = r.string()
        (named,) = r.unpack(_U8)
        n = r.count()
        params: Params
        if named:
            params = {r.string(): r.value() for _ in range(n)}
        else:
            params = tuple(r.value() for _ in range(n))
        statements.append((sql, params))
    r.end()
    return StatementRequest(statements, flags)


def decode_reply(data: bytes) -> list[SQLResult]:
    """The results; an error reply raises the error it carries."""
    r = _Reader(data, ProtocolError)
    magic, version, status = r.unpack(_REP_HEAD)
    if magic != _REP_MAGIC or version != _VERSION:
        raise ProtocolError("not a version-1 statement reply")
    if status == 1:
        (code,) = r.unpack(_U8)
        message = r.string()
        cls = _ERRORS[code] if code < len(_ERRORS) else MicrotrioError
        raise cls(message)
    results: list[SQLResult] = []
    for _ in range(r.count()):
        kind, affected, rowid = r.unpack(_RESULT_HEAD)
        columns = tuple(r.string() for _ in range(r.count()))
        rows = tuple(tuple(r.value() for _ in columns) for _ in range(r.count()))
        if kind == 1:
            results.append(SQLResult("select", columns=columns, rows=rows, last_insert_rowid=rowid))
        else:
            results.append(SQLResult("exec", rows_affected=affected, last_insert_rowid=rowid))
    r.end()
    return results
