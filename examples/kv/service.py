"""The key-value service: one table, three handlers, one :class:`microtrio.Server`.

Writes are statements (``state.database.execute``: the SQL text and parameters travel to
the leader, which runs them in its current write batch, so writers on every member never
conflict); reads
through ``state.database.read`` (ReadIndex first unless ``?stale=1``; served from the leader's
lease when the daemon runs with ``lease_read``). Keys are one path segment of at most
:data:`MAX_KEY_BYTES` bytes. Every PUT bumps the key's ``revision`` column, so a PUT of the
value a key already has is still a replicated write.
"""

from __future__ import annotations

import logging
from typing import Any

import apsw
from quart import Request, Response

import microtrio
from microtrio._api._openapi import responds_with

__all__ = ["KV_SERVER", "MAX_KEY_BYTES", "SCHEMA_UPDATES", "VERSION", "daemon_args"]

logger = logging.getLogger("kv.service")

VERSION = "0.1.0"
MAX_KEY_BYTES = 1024
_TRUE = ("1", "true", "yes")

SCHEMA_UPDATES = (
    microtrio.SchemaUpdate(
        "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)", name="kv"
    ),
    # Every PUT bumps the key's revision (as etcd's mod_revision), so every PUT changes its
    # row and is replicated, even when it stores the value the key already has.
    microtrio.SchemaUpdate(
        "ALTER TABLE kv ADD COLUMN revision INTEGER NOT NULL DEFAULT 1", name="kv-revision"
    ),
)


#: Every PUT bumps the revision, so it always changes the row (a replicated write).
_PUT = (
    "INSERT INTO kv (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = revision + 1"
)


def _key(req: Request) -> str:
    key = str((req.view_args or {}).get("key", ""))
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise microtrio.BadRequestError(f"A key is 1 to {MAX_KEY_BYTES} bytes")
    return key


async def kv_put(state: microtrio.State, req: Request) -> Any:
    """Store the request body as the key's value"""
    key = _key(req)
    value = await req.get_data(as_text=False)
    await state.database.execute(_PUT, (key, value))
    return {}


@responds_with("application/octet-stream")
async def kv_get(state: microtrio.State, req: Request) -> Any:
    """The key's value (linearizable; ?stale=1 reads this member's local state)"""
    key = _key(req)
    stale = req.args.get("stale", "").lower() in _TRUE

    def get(conn: apsw.Connection) -> bytes | None:
        for (value,) in conn.execute("SELECT value FROM kv WHERE key = ?", (key,)):
            return bytes(value) if not isinstance(value, str) else value.encode()
        return None

    value = await state.database.read(get, stale=stale, inline=True)  # a lookup by key
    if value is None:
        raise microtrio.NotFoundError(f"No key {key!r}")
    return Response(value, status=200, content_type="application/octet-stream")


async def kv_delete(state: microtrio.State, req: Request) -> Any:
    """Delete the key (404 if it does not exist)"""
    key = _key(req)
    result = await state.database.execute("DELETE FROM kv WHERE key = ?", (key,))
    if result.rows_affected == 0:
        raise microtrio.NotFoundError(f"No key {key!r}")
    return {}


KV_SERVER = microtrio.Server(
    resources=[
        microtrio.Resources(
            "1.0",
            [
                microtrio.Endpoint(
                    "kv/{key}",
                    name="kv",
                    # the hot path: served without the web framework, same gates
                    get=microtrio.EndpointAction(kv_get, fast=True),
                    put=microtrio.EndpointAction(kv_put, fast=True),
                    delete=microtrio.EndpointAction(kv_delete, fast=True),
                )
            ],
        )
    ],
    core_api=True,
    serve_unix=True,
)


def daemon_args(
    *, heartbeat_interval: float = 0.0, socket_group: str | None = None, **overrides: Any
) -> microtrio.DaemonArgs:
    """The service's ``DaemonArgs``."""
    return microtrio.DaemonArgs(
        version=VERSION,
        schema_updates=SCHEMA_UPDATES,
        servers={"kv": KV_SERVER},
        heartbeat_interval=heartbeat_interval,
        socket_group=socket_group,
        **overrides,
    )
