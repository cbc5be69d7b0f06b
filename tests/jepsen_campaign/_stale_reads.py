"""A deliberately broken kv handler, loaded only by this test suite (``--plugin``).

``GET`` always reads the member's local state (as ``?stale=1`` does), so a member cut off
from the leader, or merely behind it, serves old values as if they were current.
"""

from __future__ import annotations

from typing import Any


async def kv_get(ctx: Any, key: str, stale: bool) -> bytes | None:
    def get(conn: Any) -> bytes | None:
        for (value,) in conn.execute("SELECT value FROM kv WHERE key = ?", (key,)):
            return value.encode() if isinstance(value, str) else bytes(value)
        return None

    result: bytes | None = await ctx.database.read(get, stale=True)
    return result
