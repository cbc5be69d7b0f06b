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


# filled in by _internal_schema
INTERNAL_SCHEMA_VERSION = 6


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
                f"This cluster member's version is behind member {other.name!r}, "
                "please upgrade"
            )
        if theirs < mine or theirs[0] < mine[0] or theirs[1] < mine[1] or ext < 0:
            behind.append(other.name)
    return VersionComparison(behind=tuple(behind))
