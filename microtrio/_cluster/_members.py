"""Rows of the core tables: ``core_cluster_members`` and ``core_token_records``.

The functions taking ``conn`` are plain blocking functions meant to run inside a database
transaction (``Database.transaction``) or read (``Database.read``); the ``async`` ones wrap
them. Every write goes through the database's transaction so it replicates.

Times are stored as RFC 3339 text in UTC (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), so text order is
time order; the zero time (Go's ``0001-01-01T00:00:00Z``) means "never".
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import apsw

from .._errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from .._db import Database

__all__ = [
    "PENDING",
    "ZERO_TIME",
    "MemberRow",
    "TokenRow",
    "delete_member_by_address",
    "delete_token",
    "format_time",
    "get_member",
    "insert_member",
    "insert_token",
    "list_members",
    "list_tokens",
    "member_address",
    "parse_time",
    "purge_expired_tokens",
]

PENDING = "PENDING"
ZERO_TIME = "0001-01-01T00:00:00Z"


def format_time(moment: datetime.datetime | None) -> str:
    """RFC 3339 UTC text; None is the zero time."""
    if moment is None:
        return ZERO_TIME
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    """Inverse of :func:`format_time`; the zero time and NULL give None."""
    if text is None or text == "" or text.startswith("0001-01-01"):
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@final
@dataclass(frozen=True, slots=True)
class MemberRow:
    name: str
    address: str
    certificate: str
    schema_internal: int
    schema_external: int
    api_extensions: tuple[str, ...]
    heartbeat: str
    role: str


@final
@dataclass(frozen=True, slots=True)
class TokenRow:
    name: str
    secret: str
    expiry: datetime.datetime | None


_MEMBER_COLUMNS = (
    "name, address, certificate, schema_internal, schema_external, api_extensions, heartbeat, role"
)


def _member(row: Sequence[Any]) -> MemberRow:
    try:
        exts = json.loads(row[5]) if row[5] else []
    except ValueError:
        exts = []
    if isinstance(exts, str):
        exts = [exts]
    return MemberRow(
        name=row[0],
        address=row[1],
        certificate=row[2],
        schema_internal=int(row[3]),
        schema_external=int(row[4]),
        api_extensions=tuple(str(e) for e in exts),
        heartbeat=str(row[6]),
        role=str(row[7]),
    )


def list_members(conn: apsw.Connection) -> list[MemberRow]:
    rows = conn.execute(f"SELECT {_MEMBER_COLUMNS} FROM core_cluster_members ORDER BY name")
    return [_member(r) for r in rows]


def get_member(conn: apsw.Connection, name: str) -> MemberRow | None:
    rows = list(
        conn.execute(f"SELECT {_MEMBER_COLUMNS} FROM core_cluster_members WHERE name = ?", (name,))
    )
    return _member(rows[0]) if rows else None


def insert_member(
    conn: apsw.Connection,
    *,
    name: str,
    address: str,
    certificate: str,
    schema_internal: int,
    schema_external: int,
    extensions: Sequence[str],
    role: str = PENDING,
) -> None:
    try:
        conn.execute(
            "INSERT INTO core_cluster_members (name, address, certificate, schema_internal,"
            " schema_external, api_extensions, heartbeat, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                address,
                certificate,
                schema_internal,
                schema_external,
                json.dumps(list(extensions)),
                ZERO_TIME,
                role,
            ),
        )
    except apsw.ConstraintError as exc:
        raise ConflictError(f"Cluster member {name!r} already exists") from exc


def delete_member_by_address(conn: apsw.Connection, address: str) -> None:
    conn.execute("DELETE FROM core_cluster_members WHERE address = ?", (address,))
    if conn.changes() == 0:
        raise NotFoundError(f"No cluster member with address {address}")


def list_tokens(conn: apsw.Connection, now: datetime.datetime) -> list[TokenRow]:
    """Unexpired tokens, by name."""
    rows = conn.execute("SELECT name, secret, expiry_date FROM core_token_records ORDER BY name")
    tokens = [TokenRow(name=r[0], secret=r[1], expiry=parse_time(r[2])) for r in rows]
    return [t for t in tokens if t.expiry is None or t.expiry > now]


def purge_expired_tokens(conn: apsw.Connection, now: datetime.datetime) -> int:
    conn.execute(
        "DELETE FROM core_token_records WHERE expiry_date IS NOT NULL AND expiry_date <= ?",
        (format_time(now),),
    )
    return int(conn.changes())


def insert_token(
    conn: apsw.Connection,
    *,
    name: str,
    secret: str,
    expiry: datetime.datetime | None,
    now: datetime.datetime,
) -> None:
    """Store a join token (purging expired ones first); 409 if the name has one already."""
    purge_expired_tokens(conn, now)
    try:
        conn.execute(
            "INSERT INTO core_token_records (name, secret, expiry_date) VALUES (?, ?, ?)",
            (name, secret, None if expiry is None else format_time(expiry)),
        )
    except apsw.ConstraintError as exc:
        raise ConflictError(f"A join token for {name!r} already exists") from exc


def delete_token(conn: apsw.Connection, name: str) -> None:
    conn.execute("DELETE FROM core_token_records WHERE name = ?", (name,))
    if conn.changes() == 0:
        raise NotFoundError(f"No join token named {name!r}")


async def member_address(db: Database, name: str) -> str | None:
    """The address of member ``name``, or None."""
    row = await db.read(lambda conn: get_member(conn, name))
    return None if row is None else row.address
