"""SQL passthrough (/core/internal/sql): splitting, one transaction per request, dump."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio
from _db_helpers import open_recorded

from microtrio import BadRequestError, ConflictError
from microtrio._db import SQLResult, split_statements


def test_split_respects_quotes_comments_and_triggers() -> None:
    assert split_statements("SELECT ';'; SELECT 2") == ["SELECT ';';", "SELECT 2"]
    assert split_statements('SELECT "a;b" FROM t;') == ['SELECT "a;b" FROM t;']
    assert split_statements("SELECT 1; -- a comment; with semicolons\nSELECT 2;") == [
        "SELECT 1;",
        "-- a comment; with semicolons\nSELECT 2;",
    ]
    assert split_statements("SELECT 1 /* ; */ + 1;") == ["SELECT 1 /* ; */ + 1;"]
    trigger = (
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (';'); "
        "DELETE FROM u WHERE x = 1; END;"
    )
    assert split_statements(trigger + " SELECT 3;") == [trigger, "SELECT 3;"]
    assert split_statements("") == []
    assert split_statements("  ;; -- only a comment\n /* and another */ ;") == []
    assert split_statements("SELECT 'unterminated;") == ["SELECT 'unterminated;"]


async def test_execute_sql_results(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, _rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            results = await db.execute_sql(
                "CREATE TABLE t (a TEXT UNIQUE, b BLOB);\n"
                "INSERT INTO t VALUES ('x;y', X'6869'), ('w', NULL);\n"
                "INSERT INTO t VALUES ('z', NULL) RETURNING a;\n"
                "select * from t order by a;\n"
                "UPDATE t SET b = NULL WHERE a = 'nothing';"
            )
            assert [r.type for r in results] == ["exec", "exec", "select", "select", "exec"]
            assert results[0].rows_affected == 0
            assert results[1].rows_affected == 2
            assert results[2] == SQLResult("select", columns=("a",), rows=(("z",),))
            assert results[3].columns == ("a", "b")
            assert results[3].rows == (("w", None), ("x;y", "hi"), ("z", None))
            assert results[4].rows_affected == 0
            assert results[1].to_json() == {
                "type": "exec",
                "columns": None,
                "rows": None,
                "rows_affected": 2,
            }
            assert results[3].to_json()["rows"][1] == ["x;y", "hi"]
            await db.close()


async def test_execute_sql_is_atomic_and_maps_errors(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute_sql("CREATE TABLE t (a TEXT UNIQUE)")
            await db.execute_sql("INSERT INTO t VALUES ('a')")
            with pytest.raises(ConflictError, match="UNIQUE constraint failed: t.a"):
                await db.execute_sql("INSERT INTO t VALUES ('b'); INSERT INTO t VALUES ('a')")
            with pytest.raises(BadRequestError, match="syntax error"):
                await db.execute_sql("INSERT INTO t VALUES ('c'); SELEC 1")
            with pytest.raises(BadRequestError, match="no such table"):
                await db.execute_sql("SELECT * FROM missing")
            for empty in ("", "   ", " ; -- nothing\n"):
                with pytest.raises(BadRequestError):
                    await db.execute_sql(empty)
            entries = len(rec.entries)
            results = await db.execute_sql("SELECT a FROM t; SELECT count(*) AS n FROM t")
            assert results[0].rows == (("a",),) and results[1].columns == ("n",)
            assert len(rec.entries) == entries  # reads do not go through the committer
            await db.close()


async def test_dump(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, _rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute_sql(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT, b BLOB, c REAL);"
                "CREATE INDEX t_a ON t (a);"
                "INSERT INTO t (a, b, c) VALUES ('it''s;', X'00FF', 1.5), (NULL, NULL, -2);"
            )
            text = await db.dump()
            schema = await db.dump(schema_only=True)
            await db.close()
    assert "CREATE TABLE core_cluster_members" in text
    assert "INSERT INTO \"t\" VALUES(1,'it''s;',X'00FF',1.5);" in text
    assert "microtrio_applied" not in text
    assert "CREATE INDEX t_a ON t (a);" in schema
    assert "INSERT" not in schema
    fresh = apsw.Connection(":memory:")
    fresh.execute(text)
    assert list(fresh.execute("SELECT * FROM t ORDER BY id")) == [
        (1, "it's;", b"\x00\xff", 1.5),
        (2, None, None, -2.0),
    ]
    assert fresh.execute("SELECT seq FROM sqlite_sequence WHERE name = 't'").get == 2


async def test_connection_settings_cannot_be_changed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, rec = await open_recorded(nursery, tmp_path / "microtrio.db")
            for query in (
                "PRAGMA query_only = 0",
                "PRAGMA foreign_keys = OFF",
                "ATTACH ':memory:' AS other",
                "PRAGMA journal_mode = DELETE",
            ):
                with pytest.raises(BadRequestError, match="not authorized"):
                    await db.execute_sql(query)
            entries = len(rec.entries)
            # a replicated pragma goes through the writer; reporting pragmas stay reads
            await db.execute_sql("PRAGMA user_version = 7")
            assert len(rec.entries) == entries + 1
            results = await db.execute_sql(
                "PRAGMA user_version; PRAGMA table_info(core_token_records)"
            )
            assert results[0].rows == ((7,),)
            assert [row[1] for row in results[1].rows] == ["id", "name", "secret", "expiry_date"]
            assert len(rec.entries) == entries + 1
            await db.execute_sql("CREATE TABLE t (a); INSERT INTO t VALUES (1)")
            assert await db.read(lambda c: c.execute("PRAGMA foreign_keys").get) == 0
            assert await db.read(lambda c: c.execute("PRAGMA query_only").get) == 1
            await db.close()
