"""The replicated database layer (DESIGN.md section 3).

Public names for the other layers:

* :class:`Database` - one member's database: ``await nursery.start(db.run)`` opens the
  file and starts the single writer task; ``await db.open(bootstrap=...)`` runs the
  schema updates (reference 6.3) and sets the status online; ``await db.close()``.
  ``execute(sql, params)`` / ``execute_many([(sql, params), ...])`` (statement writes:
  the SQL and parameters run on the leader in its write batch, forwarded there by a member
  that does not lead; one call = one transaction; :class:`SQLResult` per statement),
  ``transaction(fn)`` (write; ``fn(conn)`` runs on the leader, or optimistically on the
  member that was asked, its effect is captured and replicated),
  ``read(fn, stale=False)`` (linearizable unless ``stale``),
  ``execute_sql(query)`` / ``dump(schema_only=...)`` (``/core/internal/sql``),
  ``status``, ``wait_for_status(*statuses)``, ``schema_versions()``, ``applied_index``,
  ``statistics()``, ``snapshot()``/``restore()``, ``notify_upgrade()`` (the
  ``PATCH /core/internal/database`` wake-up). A function's returned cursor is drained
  into a list of rows. Writes may only use replicable SQL: no BEGIN/COMMIT (the
  function runs in a savepoint), no ATTACH, no connection-setting pragmas, no
  ``CREATE TABLE ... AS SELECT``; ``PRAGMA user_version`` is replicated.
* :class:`DatabaseStatus` - the exact status strings of reference 6.10.
* :class:`SchemaUpdate` - one app schema update (SQL text or ``fn(conn)``).
* :class:`ExtensionRegistry`, :func:`encode_extensions`, :func:`decode_extensions` -
  API extensions (reference 6.5) and the one-element-list wire quirk.
* :class:`Committer` (protocol), :class:`LocalCommitter` - the replication seam;
  the Raft committer is built by a ``committer_factory(applier)``.
* :class:`Applier`, :class:`DatabaseSnapshot` - what the replication layer drives:
  ``await applier.apply(index, payload, term=...)`` for each committed entry,
  ``snapshot()`` / ``restore(data)``.
* :func:`compare_versions`, :class:`MemberVersions`, :class:`VersionComparison`,
  :class:`SchemaVersionError` - rolling-upgrade checks (reference 6.4).
* :class:`SQLResult`, :func:`split_statements` - SQL passthrough (reference 6.9).

How a Raft committer plugs in (``Database(..., committer_factory=make)``, where
``make(applier) -> Committer``):

* the Raft driver calls ``await applier.apply(entry.index, entry.data, term=entry.term)``
  for every committed entry in order, on every member (``None`` data for no-op and
  configuration entries: the index advances, nothing else); ``applier.applied_index``
  (stored in the database file itself) is where it resumes after a restart;
* ``commit(payload)`` on the leader proposes the payload and returns its index once
  ``applier.applied_index`` reaches it (``applier.add_listener`` wakes waiters); on a
  follower it may forward the payload bytes to the leader as they are: a payload
  records the state it was executed on and is refused (no effect, on every member)
  if data changed since, and the database then re-executes it after
  ``read_barrier()`` (optimistic concurrency, so a follower's Python transactions stay
  serializable);
* ``read_barrier()``: ReadIndex, then wait until ``applier.applied_index`` reaches it;
* snapshots: ``await applier.snapshot()`` gives ``DatabaseSnapshot(index, term, data)``;
  a follower installs one with ``await applier.restore(data)``.
"""

from __future__ import annotations

from ._apply import Applier as Applier
from ._apply import DatabaseSnapshot as DatabaseSnapshot
from ._committer import Committer as Committer
from ._committer import LocalCommitter as LocalCommitter
from ._database import Database as Database
from ._database import DatabaseStatistics as DatabaseStatistics
from ._extensions import INTERNAL_EXTENSIONS as INTERNAL_EXTENSIONS
from ._extensions import ExtensionRegistry as ExtensionRegistry
from ._extensions import decode_extensions as decode_extensions
from ._extensions import encode_extensions as encode_extensions
from ._schema import INTERNAL_SCHEMA_VERSION as INTERNAL_SCHEMA_VERSION
from ._schema import MemberVersions as MemberVersions
from ._schema import SchemaUpdate as SchemaUpdate
from ._schema import SchemaVersionError as SchemaVersionError
from ._schema import VersionComparison as VersionComparison
from ._schema import compare_versions as compare_versions
from ._sql import SQLResult as SQLResult
from ._sql import split_statements as split_statements
from ._status import DatabaseStatus as DatabaseStatus

__all__ = [
    "INTERNAL_EXTENSIONS",
    "INTERNAL_SCHEMA_VERSION",
    "Applier",
    "Committer",
    "Database",
    "DatabaseSnapshot",
    "DatabaseStatistics",
    "DatabaseStatus",
    "ExtensionRegistry",
    "LocalCommitter",
    "MemberVersions",
    "SQLResult",
    "SchemaUpdate",
    "SchemaVersionError",
    "VersionComparison",
    "compare_versions",
    "decode_extensions",
    "encode_extensions",
    "split_statements",
]
