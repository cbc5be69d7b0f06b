from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import trio

from microtrio._db import Applier, Database, ExtensionRegistry, LocalCommitter, SchemaUpdate


async def start_db(
    nursery: trio.Nursery,
    path: Path,
    *,
    updates: tuple[SchemaUpdate, ...] = (),
    **kwargs: object,
) -> Database:
    database = Database(path, extensions=ExtensionRegistry(), schema_updates=updates, **kwargs)  # type: ignore[arg-type]
    await nursery.start(database.run)
    return database


class RecordingCommitter:
    """A local committer that also keeps every payload (to replay on another database)."""

    def __init__(self, applier: Applier) -> None:
        self._local = LocalCommitter(applier)
        self.entries: list[tuple[int, bytes]] = []
        self.gate: trio.Event | None = None
        self.entered = trio.Event()
        self.fail_next: Exception | None = None

    async def commit(self, payload: bytes) -> int:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        index = await self._local.commit(payload)
        self.entries.append((index, payload))
        return index

    async def read_barrier(self) -> None:
        return None

    async def execute_remote(self, request: bytes) -> bytes | None:
        return None  # statement requests run locally

    def serve_remote(self, handler: object) -> None:
        return None


async def open_recorded(nursery: trio.Nursery, path: Path) -> tuple[Database, RecordingCommitter]:
    recorders: list[RecordingCommitter] = []

    def factory(applier: Applier) -> RecordingCommitter:
        recorders.append(RecordingCommitter(applier))
        return recorders[-1]

    database = await start_db(nursery, path, committer_factory=factory)
    await database.open(bootstrap=True)
    return database, recorders[0]


def table_checksums(path: Path) -> dict[str, str]:
    """sha256 of the schema and of every table's rows (in rowid / primary-key order)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out: dict[str, str] = {}
        schema = list(conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name"))
        out["<schema>"] = hashlib.sha256(repr(schema).encode()).hexdigest()
        for type_, name, _sql in schema:
            if type_ != "table":
                continue
            rows = list(conn.execute(f'SELECT * FROM "{name}" ORDER BY 1'))
            try:
                rowids = list(conn.execute(f'SELECT rowid FROM "{name}" ORDER BY 1'))
            except apsw.SQLError:
                rowids = []
            out[name] = hashlib.sha256(repr((rows, rowids)).encode()).hexdigest()
        return out
    finally:
        conn.close()
