"""One SQLite session records a whole write batch (execute_batch): what it captures, applied
on another copy of the database, gives what running the batch gave, when some of the
batch's transactions fail, when schema statements cut it, and when AUTOINCREMENT
sequences move."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
import pytest

from microtrio._db._apply import _apply_op
from microtrio._db._capture import TxnOutcome, execute_batch
from microtrio._db._payload import OpKind, WriteBatch

SETUP = (
    "CREATE TABLE microtrio_applied (id INTEGER PRIMARY KEY, idx INTEGER, term INTEGER, "
    "changed_idx INTEGER); INSERT INTO microtrio_applied VALUES (1, 0, 0, 0);"
    "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER);"
    "CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT);"
    "CREATE TABLE plain (a, b);"  # a rowid table without a declared key
    "INSERT INTO kv VALUES ('kept', 1), ('gone', 1); INSERT INTO plain VALUES (1, 1)"
)

Fn = Callable[[apsw.Connection], Any]


class Boom(Exception):
    pass


def _db() -> apsw.Connection:
    # as the writer's: no statement cache, every statement is prepared (and authorized)
    conn = apsw.Connection(":memory:", statementcachesize=0)
    conn.execute(SETUP)
    return conn


def _dump(conn: apsw.Connection) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    tables = conn.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").get
    out.append(("schema", repr(tables)))
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name <> 'microtrio_applied'"
        " ORDER BY name"
    ):
        # the rowid where it is the key (kv's is not: changesets carry k, not its rowid)
        key = "*" if name == "kv" else "rowid, *"
        out += [(name, *row) for row in conn.execute(f'SELECT {key} FROM "{name}" ORDER BY 1')]
    return out


def _run(fns: list[Fn]) -> tuple[list[TxnOutcome], WriteBatch, apsw.Connection]:
    """Run the batch, keep its transaction and commit it: the database as the batch left it."""
    source = _db()
    outcomes, batch = execute_batch(source, fns, keep=True)
    if source.in_transaction:
        source.execute("COMMIT")
    return outcomes, batch, source


def _replayed(batch: WriteBatch) -> apsw.Connection:
    replica = _db()
    with replica:
        for op in batch.ops:
            _apply_op(replica, 1, op)
    return replica


def _sql(*statements: str, fail: bool = False) -> Fn:
    def fn(conn: apsw.Connection) -> None:
        for statement in statements:
            conn.execute(statement)
        if fail:
            raise Boom(statements[0])

    return fn


def test_a_failed_transaction_leaves_nothing_of_it_in_the_batch() -> None:
    outcomes, batch, source = _run(
        [
            _sql("INSERT INTO kv VALUES ('a', 1)", "INSERT INTO plain VALUES (2, 2)"),
            _sql(
                "UPDATE kv SET v = 5 WHERE k = 'a'",
                "INSERT INTO kv VALUES ('b', 1)",
                "DELETE FROM kv WHERE k = 'kept'",
                "INSERT INTO plain VALUES (3, 3)",
                "UPDATE plain SET b = 9",
                fail=True,
            ),
            _sql("UPDATE kv SET v = 2 WHERE k = 'a'", "DELETE FROM kv WHERE k = 'gone'"),
            _sql("INSERT INTO kv VALUES ('c', 1)", fail=True),
        ]
    )
    assert [type(o.error) for o in outcomes] == [type(None), Boom, type(None), Boom]
    assert [op.kind for op in batch.ops] == [OpKind.CHANGESET]
    assert ("kv", "kept", 1) in _dump(source)
    assert not any(row[0] == "kv" and row[1] in ("b", "c") for row in _dump(source))
    assert _dump(_replayed(batch)) == _dump(source)


@pytest.mark.parametrize("second_fails", [False, True])
def test_a_schema_statement_after_earlier_changes(second_fails: bool) -> None:
    calls = []

    def first(conn: apsw.Connection) -> None:
        calls.append(1)
        conn.execute("INSERT INTO kv VALUES ('a', 1)")

    outcomes, batch, source = _run(
        [
            first,
            _sql(
                "UPDATE kv SET v = 7 WHERE k = 'kept'",
                "CREATE TABLE z (x)",
                "INSERT INTO z VALUES (1)",
                fail=second_fails,
            ),
            _sql("INSERT INTO kv VALUES ('c', 1)"),
        ]
    )
    kinds = [op.kind for op in batch.ops]
    if second_fails:
        # the changeset closed off at CREATE TABLE held the first transaction's row and
        # the failed one's update: the batch ran again, a session per transaction
        assert calls == [1, 1]
        assert isinstance(outcomes[1].error, Boom)
        assert kinds == [OpKind.CHANGESET]
        assert ("kv", "kept", 1) in _dump(source)
    else:
        assert calls == [1]
        assert kinds == [OpKind.CHANGESET, OpKind.SQL, OpKind.CHANGESET]
        assert ("z", 1, 1) in _dump(source) and ("kv", "kept", 7) in _dump(source)
    assert _dump(_replayed(batch)) == _dump(source)


def test_a_failed_schema_transaction_first_needs_no_second_run() -> None:
    calls = []

    def second(conn: apsw.Connection) -> None:
        calls.append(1)
        conn.execute("INSERT INTO kv VALUES ('a', 1)")

    outcomes, batch, source = _run(
        [_sql("CREATE TABLE z (x)", "INSERT INTO z VALUES (1)", fail=True), second]
    )
    assert calls == [1] and isinstance(outcomes[0].error, Boom)
    assert [op.kind for op in batch.ops] == [OpKind.CHANGESET]
    assert _dump(_replayed(batch)) == _dump(source)


def test_sequence_values_follow_the_rows_that_moved_them() -> None:
    # The first transaction's AUTOINCREMENT insert moves the sequence to 1, the second
    # sets it back: replayed in another order, the insert would move it to 1 again.
    outcomes, batch, source = _run(
        [
            _sql("INSERT INTO logs (line) VALUES ('x')", "INSERT INTO kv VALUES ('a', 1)"),
            _sql("UPDATE sqlite_sequence SET seq = 0 WHERE name = 'logs'"),
            _sql("INSERT INTO kv VALUES ('b', 1)"),
        ]
    )
    assert all(o.error is None for o in outcomes)
    assert [op.kind for op in batch.ops] == [
        OpKind.CHANGESET,
        OpKind.SEQUENCE,
        OpKind.SEQUENCE,
        OpKind.CHANGESET,
    ]
    replica = _replayed(batch)
    assert replica.execute("SELECT seq FROM sqlite_sequence").get == 0
    assert _dump(replica) == _dump(source)
