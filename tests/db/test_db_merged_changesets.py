"""A write batch carries ONE changeset per run of row changes (SQLite's changegroup), not
one per client transaction, and applying it gives the same database as applying the
transactions' changesets one by one; schema statements keep their place."""

from __future__ import annotations

import apsw

from microtrio._db._capture import execute_batch, merge_changesets
from microtrio._db._payload import Op, OpKind

SCHEMA = (
    "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER);"
    "CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT)"
)


def _conn() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute(SCHEMA)
    conn.execute(
        "CREATE TABLE microtrio_applied (id INTEGER PRIMARY KEY, idx INTEGER, term INTEGER, "
        "changed_idx INTEGER); INSERT INTO microtrio_applied VALUES (1, 0, 0, 0)"
    )
    conn.execute("INSERT INTO kv VALUES ('gone', 1), ('kept', 1)")
    return conn


def _dump(conn: apsw.Connection) -> list[tuple[object, ...]]:
    rows = list(conn.execute("SELECT 'kv', k, v FROM kv ORDER BY k"))
    rows += list(conn.execute("SELECT 'logs', id, line FROM logs ORDER BY id"))
    return rows


def _capture(
    conn: apsw.Connection,
    sql: list[str],
) -> tuple[list[Op], list[Op]]:
    """(ops as captured per transaction, ops of the batch)."""
    fns = [lambda c, s=s: c.execute(s) for s in sql]
    _, batch = execute_batch(conn, fns)
    singles: list[Op] = []
    for fn in fns:
        _, one = execute_batch(conn, [fn])
        singles.extend(one.ops)
        # run it for real so that the next transaction sees it, as in the batch
        conn.execute("BEGIN")
        fn(conn)
        conn.execute("COMMIT")
    return singles, list(batch.ops)


def _apply(conn: apsw.Connection, ops: list[Op]) -> None:
    for op in ops:
        if op.kind is OpKind.CHANGESET:
            apsw.Changeset.apply(op.data, conn)
        elif op.kind is OpKind.SQL:
            conn.execute(op.data.decode())


def test_a_batch_carries_one_changeset_and_applies_alike() -> None:
    sql = [
        "INSERT INTO kv VALUES ('a', 1)",
        "UPDATE kv SET v = 2 WHERE k = 'a'",
        "DELETE FROM kv WHERE k = 'gone'",
        "INSERT INTO kv VALUES ('b', 1)",
        "DELETE FROM kv WHERE k = 'b'",
        "INSERT INTO logs (line) VALUES ('x')",
    ]
    source = _conn()
    singles, merged = _capture(source, sql)
    changesets = [op for op in merged if op.kind is OpKind.CHANGESET]
    assert len(changesets) == 1 and len([o for o in singles if o.kind is OpKind.CHANGESET]) == 6
    one_by_one, at_once = _conn(), _conn()
    _apply(one_by_one, [o for o in singles if o.kind is not OpKind.SEQUENCE])
    _apply(at_once, [o for o in merged if o.kind is not OpKind.SEQUENCE])
    assert _dump(one_by_one) == _dump(at_once) == _dump(source)
    assert ("kv", "a", 2) in _dump(at_once) and ("kv", "gone", 1) not in _dump(at_once)


def test_schema_statements_split_the_runs_of_changesets() -> None:
    ddl = Op(OpKind.SQL, b"CREATE TABLE z (x)")
    conn = _conn()
    sessions = []
    for key in ("p", "q", "r"):
        session = apsw.Session(conn, "main")
        session.attach()
        conn.execute("INSERT INTO kv VALUES (?, 0)", (key,))
        sessions.append(Op(OpKind.CHANGESET, session.changeset()))
        session.close()
    a, b, c = sessions
    merged = merge_changesets([a, b, ddl, c])
    assert [op.kind for op in merged] == [OpKind.CHANGESET, OpKind.SQL, OpKind.CHANGESET]
    assert merged[1] is ddl and merged[2].data == c.data
    assert merged[0].data != a.data
