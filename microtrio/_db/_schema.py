"""Schema updates: the internal schema (reference 6.1), app updates and version checks.

Internal updates are recorded in ``schemas`` with ``type = 0`` and numbered so that a
fresh database reports internal version 6, like microcluster v3. Application
updates follow with ``type = 1``. Our own bookkeeping table ``microtrio_applied``
is created with the first internal update (it is not an app-visible table and does
not count as a version of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import apsw

from .._errors import StateError

__all__ = [
    "INTERNAL_SCHEMA_VERSION",
    "MemberVersions",
    "SchemaUpdate",
    "SchemaVersionError",
    "VersionComparison",
    "compare_versions",
]


class SchemaVersionError(StateError):
    """The database, or another member, is ahead of this code's schema or extensions."""


@dataclass(frozen=True)
class SchemaUpdate:
    """One schema update: SQL text, or a function run on the connection.

    It runs inside a write transaction (its effect is captured and replicated like
    any other write). Applications pass a list; the order must never change.
    """

    update: Callable[[apsw.Connection], None] | str
    name: str = field(default="")

    def run(self, conn: apsw.Connection) -> None:
        if isinstance(self.update, str):
            conn.execute(self.update)
        else:
            self.update(conn)


_SCHEMAS_SQL = """
CREATE TABLE schemas (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    version INTEGER NOT NULL,
    type INTEGER NOT NULL,
    updated_at DATETIME NOT NULL,
    UNIQUE (version, type)
)"""

_MEMBERS_SQL = """
CREATE TABLE core_cluster_members (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    certificate TEXT NOT NULL,
    schema_internal INTEGER NOT NULL,
    schema_external INTEGER NOT NULL,
    api_extensions TEXT NOT NULL DEFAULT '[]',
    heartbeat DATETIME NOT NULL,
    role TEXT NOT NULL,
    UNIQUE (name),
    UNIQUE (certificate)
)"""

_TOKENS_SQL = """
CREATE TABLE core_token_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name TEXT NOT NULL,
    secret TEXT NOT NULL,
    expiry_date DATETIME,
    UNIQUE (name),
    UNIQUE (secret)
)"""


def _noop(conn: apsw.Connection) -> None:
    """A reserved internal version (keeps the numbering equal to microcluster v3's)."""


#: The internal updates. microcluster v3 reaches version 6 through a history of
#: renames and column additions; a microtrio database never holds the old shapes, so
#: the final v3 tables are created directly and versions 4-6 are reserved no-ops.
INTERNAL_UPDATES: tuple[SchemaUpdate, ...] = (
    SchemaUpdate(_SCHEMAS_SQL, name="schemas"),
    SchemaUpdate(_MEMBERS_SQL, name="core_cluster_members"),
    SchemaUpdate(_TOKENS_SQL, name="core_token_records"),
    SchemaUpdate(_noop, name="reserved (v3 api_extensions fill)"),
    SchemaUpdate(_noop, name="reserved (v3 internal_* -> core_* rename)"),
    SchemaUpdate(_noop, name="reserved (v3 token expiry_date)"),
)
INTERNAL_SCHEMA_VERSION = len(INTERNAL_UPDATES)


def current_versions(conn: apsw.Connection) -> tuple[int, int]:
    """Highest recorded (internal, external) versions; (0, 0) on an empty database."""
    # Not conn.table_exists(): it can answer from a stale schema cache after a rolled-back
    # batch re-executes on a state that an applied entry changed (replication).
    if not conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schemas'"
    ).get:
        return 0, 0
    internal = conn.execute("SELECT coalesce(max(version), 0) FROM schemas WHERE type = 0").get
    external = conn.execute("SELECT coalesce(max(version), 0) FROM schemas WHERE type = 1").get
    return int(internal), int(external)


def ensure_schema(conn: apsw.Connection, app_updates: Sequence[SchemaUpdate]) -> tuple[int, int]:
    """Apply the missing internal then app updates (inside the caller's transaction).

    Returns the resulting (internal, external) versions. Raises
    :class:`SchemaVersionError` when the database is more recent than this code.
    """
    internal, external = current_versions(conn)
    if internal > len(INTERNAL_UPDATES) or external > len(app_updates):
        raise SchemaVersionError(
            f"The database schema ({internal}, {external}) is more recent than expected "
            f"({len(INTERNAL_UPDATES)}, {len(app_updates)})"
        )
    for kind, updates, done in ((0, INTERNAL_UPDATES, internal), (1, app_updates, external)):
        for version in range(done + 1, len(updates) + 1):
            updates[version - 1].run(conn)
            conn.execute(
                "INSERT INTO schemas (version, type, updated_at) VALUES (?, ?, strftime('%s'))",
                (version, kind),
            )
    return len(INTERNAL_UPDATES), len(app_updates)


@dataclass(frozen=True)
class MemberVersions:
    """What one member knows: schema versions and API extensions (None = unknown/nil)."""

    name: str
    internal: int
    external: int
    extensions: Sequence[str] | None


@dataclass(frozen=True)
class VersionComparison:
    """Result of :func:`compare_versions`: members that still need the update."""

    behind: tuple[str, ...]

    @property
    def waiting(self) -> bool:
        return bool(self.behind)


def _extensions_cmp(ours: Sequence[str], theirs: Sequence[str] | None) -> int:
    """-1: they are behind, 0: equal, 1: they are ahead (or incompatible)."""
    if theirs is None:
        return -1
    if list(ours) == list(theirs):
        return 0
    if len(theirs) < len(ours) and list(ours[: len(theirs)]) == list(theirs):
        return -1
    return 1


def compare_versions(own: MemberVersions, others: Iterable[MemberVersions]) -> VersionComparison:
    """Rolling-upgrade check (reference 6.4) of this member against the other members.

    Raises :class:`SchemaVersionError` when another member is ahead (this member must
    be upgraded and must not start). Returns the names of members that are behind:
    when non-empty the database status is "waiting for an upgrade".
    Callers pass only non-``PENDING`` members.
    """
    behind: list[str] = []
    for other in others:
        if other.name == own.name:
            continue
        mine = (own.internal, own.external)
        theirs = (other.internal, other.external)
        ext = _extensions_cmp(list(own.extensions or ()), other.extensions)
        if theirs[0] > mine[0] or theirs[1] > mine[1] or (theirs == mine and ext > 0):
            raise SchemaVersionError(
                f"This cluster member's version is behind member {other.name!r}, please upgrade"
            )
        if theirs < mine or theirs[0] < mine[0] or theirs[1] < mine[1] or ext < 0:
            behind.append(other.name)
    return VersionComparison(behind=tuple(behind))
