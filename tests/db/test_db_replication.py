"""A database that only applies payloads ends up identical to the one that executed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
import trio
from _db_helpers import RecordingCommitter, start_db, table_checksums

from microtrio import BadRequestError, DatabaseNotOpenError, DivergenceError
from microtrio._db import Applier, Database
from microtrio._db._payload import Op, OpKind, WriteBatch, decode_batch, encode_batch

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, r INTEGER, at TEXT, blob BLOB);
CREATE TABLE audit (n INTEGER, what TEXT);
CREATE TRIGGER items_ai AFTER INSERT ON items
BEGIN
    INSERT INTO audit VALUES (new.id, 'ins ' || random());
END;
CREATE TRIGGER items_au AFTER UPDATE ON items
BEGIN
    UPDATE audit SET what = what || ' upd ' || random() WHERE n = new.id;
END;
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id) ON DELETE CASCADE);
"""


class Pair:
    def __init__(self, leader: Database, follower: Database, rec: RecordingCommitter) -> None:
        self.leader = leader
        self.follower = follower
        self.rec = rec

    async def replay(self) -> None:
        for index, payload in self.rec.entries:
            await self.follower.applier.apply(index, payload)


async def open_pair(nursery: trio.Nursery, tmp_path: Path) -> Pair:
    recorders: list[RecordingCommitter] = []

    def factory(applier: Applier) -> RecordingCommitter:
        recorders.append(RecordingCommitter(applier))
        return recorders[-1]

    leader = await start_db(nursery, tmp_path / "a" / "microtrio.db", committer_factory=factory)
    await leader.open(bootstrap=True)
    follower = await start_db(nursery, tmp_path / "b" / "microtrio.db")
    return Pair(leader, follower, recorders[0])


def setup_schema(conn: apsw.Connection) -> None:
    # schema statements and row changes in one transaction, in order
    conn.execute("CREATE TABLE early (k TEXT PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT INTO early VALUES ('a', 1)")
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO items (r, at) VALUES (random(), datetime('now'))")
    conn.execute("ALTER TABLE early ADD COLUMN extra TEXT DEFAULT 'd'")
    conn.execute("UPDATE early SET extra = hex(randomblob(4)), v = v + 1")


def workload(i: int) -> Callable[[apsw.Connection], None]:
    def fn(conn: apsw.Connection) -> None:
        conn.execute(
            "INSERT INTO items (r, at, blob) VALUES (random(), datetime('now', ?), randomblob(8))",
            (f"+{i} seconds",),
        )
        conn.execute("UPDATE items SET r = random() WHERE id = (SELECT min(id) FROM items)")
        conn.execute("INSERT INTO parent VALUES (?)", (i,))
        conn.execute("INSERT INTO child (p) VALUES (?), (?)", (i, i))
        if i % 3 == 0:
            conn.execute("DELETE FROM parent WHERE id = ?", (i,))  # cascades to child
            conn.execute("INSERT INTO items (r) VALUES (0)")
            conn.execute("DELETE FROM items WHERE id = last_insert_rowid()")
        if i == 7:
            conn.execute("INSERT INTO audit VALUES (-1, 'no primary key')")
            conn.execute("UPDATE audit SET what = 'changed ' || random() WHERE n = -1")

    return fn


async def test_executed_and_applied_databases_are_identical(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            await pair.leader.transaction(setup_schema)
            async with trio.open_nursery() as writers:
                for i in range(1, 25):
                    writers.start_soon(pair.leader.transaction, workload(i))
            await pair.leader.transaction(lambda c: c.execute("DROP TABLE early"))
            await pair.replay()
            assert pair.follower.applied_index == pair.leader.applied_index
            # the trigger ran once per insert, on the leader only
            n_items, n_audit = await pair.leader.read(
                lambda c: (
                    c.execute(
                        "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'items'), "
                        "(SELECT count(*) FROM audit)"
                    ).get
                )
            )
            assert n_audit == n_items + 1  # one trigger row per inserted item, plus id -1
            await pair.leader.close()
            await pair.follower.close()
    a = table_checksums(tmp_path / "a" / "microtrio.db")
    b = table_checksums(tmp_path / "b" / "microtrio.db")
    assert "items" in a and "early" not in a and "sqlite_sequence" in a
    assert a == b


async def test_schema_and_rows_are_captured_in_order(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            before = len(pair.rec.entries)
            await pair.leader.transaction(setup_schema)
            assert len(pair.rec.entries) == before + 1
            batch = decode_batch(pair.rec.entries[-1][1])
            kinds = [op.kind for op in batch.ops]
            assert kinds[:4] == [OpKind.SQL, OpKind.CHANGESET, OpKind.SQL, OpKind.SQL]
            sql = [op.data.decode() for op in batch.ops if op.kind is OpKind.SQL]
            assert sql[0].startswith("CREATE TABLE early")
            assert any(s.startswith("ALTER TABLE early") for s in sql)
            assert any(s.startswith("CREATE TRIGGER items_ai") for s in sql)

            # a swallowed failing schema statement is not replicated
            def swallow(conn: apsw.Connection) -> None:
                with pytest.raises(apsw.SQLError):
                    conn.execute("CREATE TABLE items (x)")
                conn.execute("CREATE TABLE IF NOT EXISTS items (x)")
                conn.execute("INSERT INTO early VALUES ('z', 9, 'x')")

            await pair.leader.transaction(swallow)
            kinds = [op.kind for op in decode_batch(pair.rec.entries[-1][1]).ops]
            assert kinds == [OpKind.CHANGESET]
            await pair.replay()
            await pair.leader.close()
            await pair.follower.close()
    assert table_checksums(tmp_path / "a" / "microtrio.db") == table_checksums(
        tmp_path / "b" / "microtrio.db"
    )


async def test_apply_is_idempotent_and_divergence_is_loud(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            await pair.leader.transaction(setup_schema)
            await pair.replay()
            await pair.replay()  # every entry at or below the applied index is skipped
            follower = pair.follower
            index = follower.applied_index
            assert index == pair.leader.applied_index
            # a changeset inserting a row that already exists: conflict -> divergence
            ops = decode_batch(pair.rec.entries[-1][1]).ops
            print("OPS", ops)
            changes = tuple(op for op in ops if op.kind is OpKind.CHANGESET)
            insert = encode_batch(WriteBatch(follower.applier.changed_index, changes))
            with pytest.raises(DivergenceError, match="conflict"):
                await follower.applier.apply(index + 1, insert)
            assert follower.applied_index == index
            # the applier stays stopped
            with pytest.raises(DivergenceError):
                await follower.applier.apply(index + 2, None)
            await pair.leader.close()
            await follower.close()


async def test_malformed_payload_is_divergence(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db = await start_db(nursery, tmp_path / "microtrio.db")
            with pytest.raises(DivergenceError):
                await db.applier.apply(1, b"garbage")
            await db.close()
            with pytest.raises(DatabaseNotOpenError):
                await db.applier.apply(1, None)


async def test_stale_batch_is_refused_everywhere(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db = await start_db(nursery, tmp_path / "microtrio.db")
            create = WriteBatch(0, (Op(OpKind.SQL, b"CREATE TABLE t (a)"),))
            await db.applier.apply(1, encode_batch(create))
            await db.applier.apply(2, None)  # e.g. a Raft no-op entry
            await db.applier.apply(3, b"")  # the same, as an empty payload
            await db.applier.apply(3, b"garbage")  # already applied: skipped
            assert db.applier.changed_index == 1
            # executed on the state of index 0, but index 1 changed data since
            stale = WriteBatch(0, (Op(OpKind.SQL, b"CREATE TABLE u (a)"),))
            await db.applier.apply(4, encode_batch(stale))
            assert db.applier.was_refused(4)
            assert db.applied_index == 4
            fresh = WriteBatch(3, (Op(OpKind.SQL, b"CREATE TABLE v (a)"),))
            await db.applier.apply(5, encode_batch(fresh))
            assert not db.applier.was_refused(5)
            assert db.applier.changed_index == 5
            await db.close()
    names = set(table_checksums(tmp_path / "microtrio.db"))
    assert {"t", "v"} <= names and "u" not in names


async def test_snapshot_restore(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            await pair.leader.transaction(setup_schema)
            snap = await pair.leader.snapshot()
            assert snap.index == pair.leader.applied_index
            await pair.leader.transaction(workload(1))
            await pair.follower.restore(snap.data)
            assert pair.follower.applied_index == snap.index
            # entries after the snapshot apply on top of it
            for index, payload in pair.rec.entries:
                await pair.follower.applier.apply(index, payload)
            assert pair.follower.applied_index == pair.leader.applied_index
            from microtrio import CorruptionError

            with pytest.raises(CorruptionError):
                await pair.follower.restore(b"not a database")
            await pair.leader.close()
            await pair.follower.close()
    assert table_checksums(tmp_path / "a" / "microtrio.db") == table_checksums(
        tmp_path / "b" / "microtrio.db"
    )


async def test_renames_savepoints_pragmas_and_temp_tables(tmp_path: Path) -> None:
    def step1(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE old_name (a INTEGER PRIMARY KEY, b TEXT)")
        conn.execute("INSERT INTO old_name VALUES (1, 'one')")
        conn.execute("ALTER TABLE old_name RENAME TO new_name")
        conn.execute("ALTER TABLE new_name RENAME COLUMN b TO label")
        conn.execute("INSERT INTO new_name VALUES (2, 'two')")
        conn.execute("PRAGMA user_version = 42")
        conn.execute("CREATE TEMP TABLE scratch (x)")
        conn.execute("INSERT INTO scratch VALUES (1)")
        with conn:  # apsw: a client savepoint, rolled back by the exception below
            conn.execute("INSERT INTO new_name VALUES (3, 'kept')")
        with pytest.raises(ZeroDivisionError), conn:
            conn.execute("INSERT INTO new_name VALUES (4, 'rolled back')")
            conn.execute("UPDATE new_name SET label = 'changed' WHERE a = 1")
            raise ZeroDivisionError

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            await pair.leader.transaction(step1)
            with pytest.raises(BadRequestError, match="AS SELECT"):
                await pair.leader.transaction(
                    lambda c: c.execute("CREATE TABLE copy AS SELECT random() AS r")
                )
            await pair.replay()
            await pair.leader.close()
            await pair.follower.close()
    a = table_checksums(tmp_path / "a" / "microtrio.db")
    assert a == table_checksums(tmp_path / "b" / "microtrio.db")
    assert "new_name" in a and "old_name" not in a and "scratch" not in a and "copy" not in a
    follower = apsw.Connection(str(tmp_path / "b" / "microtrio.db"))
    assert list(follower.execute("SELECT a, label FROM new_name ORDER BY a")) == [
        (1, "one"),
        (2, "two"),
        (3, "kept"),
    ]
    assert follower.execute("PRAGMA user_version").get == 42
    follower.close()


async def test_failed_prepare_does_not_mislabel_the_next_statement(tmp_path: Path) -> None:
    def fn(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
        for bad in ("CREATE TABLE t (x)", "CREATE TABLE broken (a", "PRAGMA user_version = "):
            with pytest.raises(apsw.SQLError):
                conn.execute(bad)
            conn.execute("INSERT INTO t (v) VALUES (random())")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pair = await open_pair(nursery, tmp_path)
            await pair.leader.transaction(fn)
            ops = decode_batch(pair.rec.entries[-1][1]).ops
            assert [op.kind for op in ops] == [OpKind.SQL, OpKind.CHANGESET]
            count = await pair.leader.read(lambda c: c.execute("SELECT count(*) FROM t").get)
            assert count == 3
            await pair.replay()
            await pair.leader.close()
            await pair.follower.close()
    a = table_checksums(tmp_path / "a" / "microtrio.db")
    assert a == table_checksums(tmp_path / "b" / "microtrio.db")
