from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio
from _db_helpers import start_db

from microtrio import BadRequestError, ConflictError, DatabaseNotOpenError
from microtrio._db import (
    INTERNAL_SCHEMA_VERSION,
    Database,
    DatabaseStatus,
    ExtensionRegistry,
    SchemaUpdate,
)


async def test_internal_schema_matches_reference(db: Database) -> None:
    def tables(conn: apsw.Connection) -> dict[str, list[tuple[str, str, int]]]:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'"):
            out[name] = [(r[1], r[2], r[3]) for r in conn.execute(f"PRAGMA table_info({name})")]
        return out

    with trio.fail_after(10):
        t = await db.read(tables)
        versions = await db.read(
            lambda c: list(c.execute("SELECT version, type FROM schemas ORDER BY id"))
        )
    assert [c[0] for c in t["schemas"]] == ["id", "version", "type", "updated_at"]
    assert [c[0] for c in t["core_cluster_members"]] == [
        "id",
        "name",
        "address",
        "certificate",
        "schema_internal",
        "schema_external",
        "api_extensions",
        "heartbeat",
        "role",
    ]
    assert [c[0] for c in t["core_token_records"]] == ["id", "name", "secret", "expiry_date"]
    assert ("expiry_date", "DATETIME", 0) in t["core_token_records"]
    assert "microtrio_applied" in t
    assert versions == [(v, 0) for v in range(1, 7)]
    assert INTERNAL_SCHEMA_VERSION == 6
    assert db.schema_versions() == (6, 0, ExtensionRegistry().names)
    assert db.status is DatabaseStatus.ONLINE


async def test_transaction_read_and_errors(db: Database) -> None:
    with trio.fail_after(10):
        await db.transaction(
            lambda c: c.execute("INSERT INTO core_token_records (name, secret) VALUES ('a', 's')")
        )
        rows = await db.read(lambda c: c.execute("SELECT name, secret FROM core_token_records").get)
        assert rows == ("a", "s")
        with pytest.raises(ConflictError, match="UNIQUE"):
            await db.transaction(
                lambda c: c.execute(
                    "INSERT INTO core_token_records (name, secret) VALUES ('a', 't')"
                )
            )
        with pytest.raises(BadRequestError, match="no such table"):
            await db.transaction(lambda c: c.execute("INSERT INTO nope VALUES (1)"))
        with pytest.raises(BadRequestError):
            await db.transaction(lambda c: c.execute("COMMIT"))

        def boom(conn: apsw.Connection) -> None:
            conn.execute("DELETE FROM core_token_records")
            raise KeyError("app error")

        with pytest.raises(KeyError):
            await db.transaction(boom)
        assert (
            await db.read(lambda c: c.execute("SELECT count(*) FROM core_token_records").get) == 1
        )


async def test_status_lifecycle(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            database = Database(tmp_path / "d" / "microtrio.db", extensions=ExtensionRegistry())
            assert database.status is DatabaseStatus.NOT_INITIALIZED
            with pytest.raises(DatabaseNotOpenError, match="not yet initialized"):
                await database.transaction(lambda c: None)
            await nursery.start(database.run)
            assert database.status is DatabaseStatus.NOT_INITIALIZED
            await database.open(bootstrap=True)
            assert str(database.status) == "Database is online"
            await database.close()
            assert str(database.status) == "Database is offline"
            with pytest.raises(DatabaseNotOpenError, match="Database is offline"):
                await database.read(lambda c: None)


async def test_app_updates_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "database" / "microtrio.db"
    patch = tmp_path / "patch.global.sql"
    one = SchemaUpdate(
        "CREATE TABLE extended_table (id INTEGER PRIMARY KEY, key TEXT UNIQUE, value TEXT)"
    )

    def two(conn: apsw.Connection) -> None:
        conn.execute("ALTER TABLE extended_table ADD COLUMN extra INTEGER DEFAULT 7")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            database = await start_db(nursery, path, updates=(one,))
            await database.open(bootstrap=True)
            assert database.schema_versions()[:2] == (6, 1)
            await database.transaction(
                lambda c: c.execute("INSERT INTO extended_table (key, value) VALUES ('k', 'v')")
            )
            index = database.applied_index
            await database.close()

        patch.write_text("UPDATE extended_table SET value = 'patched';\n")
        async with trio.open_nursery() as nursery:
            database = await start_db(
                nursery, path, updates=(one, SchemaUpdate(two)), patch_path=patch
            )
            assert database.applied_index == index
            await database.open(bootstrap=False)
            assert database.schema_versions()[:2] == (6, 2)
            assert not patch.exists()
            row = await database.read(
                lambda c: c.execute("SELECT key, value, extra FROM extended_table").get
            )
            assert row == ("k", "patched", 7)
            await database.close()

        # the code now knows fewer updates than the database holds
        async with trio.open_nursery() as nursery:
            database = await start_db(nursery, path, updates=(one,))
            with pytest.raises(Exception, match="more recent than expected"):
                await database.open(bootstrap=False)
            assert database.status is DatabaseStatus.OFFLINE
            await database.close()


@pytest.mark.parametrize("fail_at", [1, 2])
async def test_a_failed_open_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """A connection that cannot be opened (here the first or second reader) fails ``run``
    with a StateError, and the connections opened before it are closed, not leaked."""
    import apsw

    from microtrio import StateError

    real = apsw.Connection
    opened: list[apsw.Connection] = []

    def connection(*args: object, **kwargs: object) -> apsw.Connection:
        if len(opened) == fail_at:
            raise apsw.CantOpenError("unable to open database file")
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(apsw, "Connection", connection)
    database = Database(tmp_path / "d" / "microtrio.db", extensions=ExtensionRegistry())
    with trio.fail_after(20):
        with pytest.raises(StateError, match="cannot open database .*unable to open"):
            await database.run()
    assert str(database.status) == "Database is offline"
    assert len(opened) == fail_at
    for conn in opened:
        with pytest.raises(apsw.ConnectionClosedError):
            conn.execute("SELECT 1")
