"""API extensions, version comparison and the rolling-upgrade wait."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing
from _db_helpers import start_db

from microtrio import DatabaseNotOpenError, ValidationError
from microtrio._db import (
    Database,
    DatabaseStatus,
    ExtensionRegistry,
    MemberVersions,
    SchemaUpdate,
    SchemaVersionError,
    compare_versions,
    decode_extensions,
    encode_extensions,
)

INTERNAL = ["internal:runtime_extension_v1", "internal:rename_core_endpoints"]


def test_extension_registry() -> None:
    reg = ExtensionRegistry(["custom_extension_a_0", "custom_extension_a_1"])
    assert reg.names == [*INTERNAL, "custom_extension_a_0", "custom_extension_a_1"]
    assert reg.version == 4
    assert reg.has("custom_extension_a_1") and reg.has(INTERNAL[0])
    assert not reg.has("other")
    assert ExtensionRegistry().names == INTERNAL
    for bad in (["Bad"], ["a-b"], ["a__b"], ["_a"], ["a_"], ["internal:x"], ["x", "x"], [""]):
        with pytest.raises(ValidationError):
            ExtensionRegistry(bad)


def test_extension_wire_quirk() -> None:
    assert encode_extensions(["one"]) == "one"
    assert encode_extensions(["a", "b"]) == ["a", "b"]
    assert encode_extensions([]) == []
    assert decode_extensions("one") == ["one"]
    assert decode_extensions(["a", "b"]) == ["a", "b"]
    assert decode_extensions(None) == []
    assert decode_extensions(json.loads(json.dumps(encode_extensions(["x"])))) == ["x"]
    with pytest.raises(ValidationError):
        decode_extensions(3)
    with pytest.raises(ValidationError):
        decode_extensions(["a", 1])


def mv(name: str, i: int, e: int, ext: list[str] | None = None) -> MemberVersions:
    return MemberVersions(name, i, e, INTERNAL if ext is None else ext)


def test_compare_versions() -> None:
    own = mv("me", 6, 2)
    assert not compare_versions(own, [mv("me", 6, 2), mv("b", 6, 2)]).waiting
    assert compare_versions(own, [mv("b", 6, 1), mv("c", 5, 2), mv("d", 6, 2)]).behind == (
        "b",
        "c",
    )
    assert compare_versions(own, [mv("b", 6, 2, INTERNAL[:1])]).behind == ("b",)
    assert compare_versions(own, [MemberVersions("b", 6, 2, None)]).behind == ("b",)
    with pytest.raises(SchemaVersionError, match="please upgrade"):
        compare_versions(own, [mv("b", 6, 3)])
    with pytest.raises(SchemaVersionError):
        compare_versions(own, [mv("b", 7, 0)])
    with pytest.raises(SchemaVersionError):
        compare_versions(own, [mv("b", 6, 2, [*INTERNAL, "newer"])])


def add_member(name: str, internal: int, external: int, role: str = "voter") -> SchemaUpdate:
    def fn(conn: apsw.Connection) -> None:
        conn.execute(
            "INSERT INTO core_cluster_members (name, address, certificate, schema_internal, "
            "schema_external, api_extensions, heartbeat, role) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            (name, f"{name}:1", f"cert-{name}", internal, external, json.dumps(INTERNAL), role),
        )

    return SchemaUpdate(fn)


async def _bootstrap(nursery: trio.Nursery, path: Path, others: list[SchemaUpdate]) -> None:
    db = await start_db(nursery, path)
    await db.open(bootstrap=True)
    await db.transaction(add_member("me", 6, 0).run)
    for update in others:
        await db.transaction(update.run)
    await db.close()


async def test_waiting_for_members_behind(tmp_path: Path) -> None:
    path = tmp_path / "microtrio.db"
    app = (SchemaUpdate("CREATE TABLE app (x)"),)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await _bootstrap(
                nursery, path, [add_member("other", 6, 0), add_member("joining", 1, 0, "PENDING")]
            )
            db = await start_db(nursery, path, updates=app)
            done = trio.Event()

            async def opener(database: Database) -> None:
                await database.open(bootstrap=False, member_name="me")
                done.set()

            nursery.start_soon(opener, db)
            await db.wait_for_status(DatabaseStatus.WAITING)
            # "other" upgrades (a stand-in for its own write) and notifies us
            raw = apsw.Connection(str(path))
            raw.execute("UPDATE core_cluster_members SET schema_external = 1 WHERE name = 'other'")
            raw.close()
            db.notify_upgrade()
            await done.wait()
            assert db.status is DatabaseStatus.ONLINE
            assert db.schema_versions()[:2] == (6, 1)
            row = await db.read(
                lambda c: (
                    c.execute(
                        "SELECT schema_external FROM core_cluster_members WHERE name = 'me'"
                    ).get
                )
            )
            assert row == 1
            await db.close()


async def test_member_ahead_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "microtrio.db"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await _bootstrap(nursery, path, [add_member("other", 6, 3)])
            db = await start_db(nursery, path)
            with pytest.raises(SchemaVersionError, match="please upgrade"):
                await db.open(bootstrap=False, member_name="me")
            assert db.status is DatabaseStatus.OFFLINE
            await db.close()


async def test_close_while_waiting(tmp_path: Path) -> None:
    path = tmp_path / "microtrio.db"
    app = (SchemaUpdate("CREATE TABLE app (x)"),)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await _bootstrap(nursery, path, [add_member("other", 6, 0)])
            db = await start_db(nursery, path, updates=app)

            async def opener() -> None:
                with pytest.raises(DatabaseNotOpenError):
                    await db.open(bootstrap=False, member_name="me")

            nursery.start_soon(opener)
            await db.wait_for_status(DatabaseStatus.WAITING)
            with pytest.raises(DatabaseNotOpenError, match="waiting for an upgrade"):
                await db.transaction(lambda c: None)
            await db.close()
            assert db.status is DatabaseStatus.OFFLINE
