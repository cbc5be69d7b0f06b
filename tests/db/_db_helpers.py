from __future__ import annotations

from pathlib import Path

import trio

from microtrio._db import Database, ExtensionRegistry, SchemaUpdate


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
