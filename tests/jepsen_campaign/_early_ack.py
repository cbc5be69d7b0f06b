"""A deliberately broken kv handler, loaded only by this test suite (``--plugin``).

``PUT`` answers as soon as the write is handed to the database, before it is committed: the
transaction runs in the background. A linearizable read that starts after the answer can
then miss the write, which the register checker must report.
"""

from __future__ import annotations

from typing import Any


async def kv_put(ctx: Any, key: str, value: bytes) -> None:
    def put(conn: Any) -> None:
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    ctx.nursery.start_soon(ctx.database.transaction, put)  # acknowledged before commit
