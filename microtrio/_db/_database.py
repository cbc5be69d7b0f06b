"""One member's replicated database: the single writer, reads, schema updates.

Theory of operation (DESIGN.md section 3): client write transactions are queued on
a bounded channel; the writer task takes everything pending (up to ``max_batch``)
as one batch, runs it on the writer connection and captures its effect
(:mod:`._capture`), rolls it back (or keeps it open for the Applier to commit as
the entry), hands the encoded batch to the :class:`~._committer.Committer` and, once
the entry is applied locally by the :class:`~._apply.Applier` (the only code that
changes the file), resolves every caller. The next batch starts only after that, so it
sees the previous one.
Reads use their own connections (WAL) and, unless ``stale``, wait for the
committer's read barrier first.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast, final, overload

import apsw
import trio

from .._errors import (
    BadRequestError,
    DatabaseNotOpenError,
    MicrotrioError,
    OutcomeUnknownError,
    StateError,
    UnavailableError,
)
from .._nowait import put, take
from ._apply import APPLIED_TABLE_SQL, Applier, DatabaseSnapshot, passive_checkpoint
from ._capture import (
    BUDGET_EVERY,
    PRIVATE_TABLES,
    StepBudget,
    TxnOutcome,
    drain,
    execute_batch,
    rollback,
)
from ._committer import Committer, LocalCommitter
from ._extensions import ExtensionRegistry
from ._payload import WriteBatch, encode_batch
from ._schema import (
    INTERNAL_UPDATES,
    MemberVersions,
    SchemaUpdate,
    compare_versions,
    current_versions,
    ensure_schema,
)
from ._sql import (
    NotReadOnlyError,
    SQLResult,
    dump_database,
    map_sqlite_error,
    reader_authorizer,
    run_statements,
    split_statements,
)
from ._statements import (
    FLAG_TEXT_RESULTS,
    Params,
    StatementRequest,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_reply,
    encode_request,
    normalize_statements,
    run_request,
)
from ._status import DatabaseStatus
from ._writeback import WalWriteback

__all__ = ["Database", "DatabaseStatistics"]

logger = logging.getLogger("microtrio.db")

T = TypeVar("T")

#: How often a batch refused as stale (see :mod:`._apply`) is re-executed. Each retry runs
#: after a read barrier, on a state that includes what beat it; only a member whose writes
#: keep racing a busier writer on the same database needs more than a few.
_MAX_ATTEMPTS = 64
#: How long a reader waits for a lock (a worker thread; inline reads never wait).
_READER_BUSY_MS = 10_000
#: How long the writer waits for a lock (worker thread only: inline batches never wait).
_WRITER_BUSY_MS = 10_000
#: SQLite VM steps a write batch of statements may take on the event loop (~0.5 ms here);
#: a batch that needs more is interrupted, thrown away and run in a worker thread.
INLINE_BATCH_STEPS = 100_000
#: How long a member waiting for others to upgrade sleeps between checks (reference 6.4).
UPGRADE_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class DatabaseStatistics:
    """``commits``: write batches committed (attempts included); ``transactions``: client
    transactions run by the writer; ``queued``: waiting for the writer; ``inline_batches``:
    write batches of statements run on the event loop (no thread hand-off);
    ``held_commits``: entries committed from the transaction that ran them, not applied a
    second time (on the leader, usually every write batch); ``background_checkpoints`` /
    ``writer_checkpoints``: WAL checkpoints run on the background connection / on the
    writer connection (which finishes each background one: see :mod:`._apply`);
    ``wal_writebacks``: early writebacks of the WAL started between checkpoints
    (``_writeback.py``)."""

    commits: int
    transactions: int
    queued: int
    applied_index: int
    inline_batches: int = 0
    held_commits: int = 0
    background_checkpoints: int = 0
    writer_checkpoints: int = 0
    wal_writebacks: int = 0


class _Request:
    __slots__ = ("done", "fenced", "fn", "inline", "outcome")

    def __init__(
        self, fn: Callable[[apsw.Connection], Any], *, fenced: bool, inline: bool = False
    ) -> None:
        self.fn = fn
        #: A client transaction: acknowledged without a commit only on a state at least
        #: as new as a read index (internal start-up writes are not fenced).
        self.fenced = fenced
        #: Pure SQL (statements): may run on the event loop under a step budget, and run
        #: again in a thread if it exceeds it (no Python side effects to repeat).
        self.inline = inline
        self.done = trio.Event()
        self.outcome: TxnOutcome | None = None

    def resolve(self, outcome: TxnOutcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


@final
class Database:
    """One member's replicated SQLite database.

    Lifecycle: build it, ``await nursery.start(db.run)`` (opens the file, starts the
    writer task; status stays "not yet initialized"), ``await db.open(bootstrap=...)``
    (schema updates, then "online"), ``await db.close()`` (status "offline"; ``run``
    returns).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        extensions: ExtensionRegistry,
        schema_updates: Sequence[SchemaUpdate] = (),
        committer_factory: Callable[[Applier], Committer] = LocalCommitter,
        patch_path: str | os.PathLike[str] | None = None,
        max_batch: int = 256,
        queue_size: int = 1024,
        readers: int = 2,
        member: str = "",
    ) -> None:
        self._member = member
        self._path = Path(path)
        self._patch_path = Path(patch_path) if patch_path is not None else None
        self._extensions = extensions
        self._app_updates = tuple(schema_updates)
        self._committer_factory = committer_factory
        self._max_batch = max_batch
        self._reader_count = readers
        self._status = DatabaseStatus.NOT_INITIALIZED
        self._status_changed = trio.Event()
        self._writer_limiter = trio.CapacityLimiter(1)
        self._reader_limiter = trio.CapacityLimiter(readers)
        self._send, self._recv = trio.open_memory_channel[_Request](queue_size)
        self._conn: apsw.Connection | None = None
        self._readers: list[apsw.Connection] = []
        #: Replicated members: the connection that runs WAL checkpoints in the background.
        self._checkpointer: apsw.Connection | None = None
        #: Replicated members: starts the WAL's writeback between checkpoints.
        self._wal_writeback: WalWriteback | None = None
        #: Checkpoints run in the background (statistics, tests).
        self.background_checkpoints = 0
        self._applier: Applier | None = None
        self._committer: Committer | None = None
        self._versions = (0, 0)
        self._running = False
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._upgrade = trio.Event()
        self._commits = 0
        self._transactions = 0
        #: Write batches that ran on the event loop (statistics, tests).
        self._inline_batches = 0

    # -- status --------------------------------------------------------------------
    @property
    def status(self) -> DatabaseStatus:
        """The current status (reference 6.10 strings)."""
        return self._status

    @status.setter
    def status(self, value: DatabaseStatus) -> None:
        if value is not self._status:
            self._status = value
            self._status_changed.set()
            self._status_changed = trio.Event()

    async def wait_for_status(self, *statuses: DatabaseStatus) -> DatabaseStatus:
        """Wait until the status is one of ``statuses``; return it."""
        while self._status not in statuses:
            await self._status_changed.wait()
        return self._status

    def statistics(self) -> DatabaseStatistics:
        """Counters for monitoring and tests (group commit shows as commits < transactions)."""
        return DatabaseStatistics(
            commits=self._commits,
            transactions=self._transactions,
            queued=self._recv.statistics().current_buffer_used,
            applied_index=self._applier.applied_index if self._applier is not None else 0,
            inline_batches=self._inline_batches,
            held_commits=self._applier.held_commits if self._applier is not None else 0,
            background_checkpoints=self.background_checkpoints,
            writer_checkpoints=self._applier.writer_checkpoints if self._applier else 0,
            wal_writebacks=self._wal_writeback.kicks if self._wal_writeback is not None else 0,
        )

    # -- lifecycle -----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database files and run the writer until :meth:`close` or cancellation."""
        if self._running or self._stopped.is_set():
            raise StateError("a Database runs once")
        try:
            await trio.to_thread.run_sync(self._open_files, limiter=self._writer_limiter)
        except BaseException:
            self.status = DatabaseStatus.OFFLINE
            with trio.CancelScope(shield=True):  # what opened before the failure
                await trio.to_thread.run_sync(self._close_files, limiter=self._writer_limiter)
            raise
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer_loop)
                if self._checkpointer is not None:
                    nursery.start_soon(self._checkpoint_loop, self._checkpointer)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._running = False
            self.status = DatabaseStatus.OFFLINE
            self._send.close()
            self._fail_queued()
            if self._applier is not None:
                self._applier.close()
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                # wait for reads in flight: every reader connection back in the pool
                for _ in range(self._reader_count):
                    await self._reader_limiter.acquire_on_behalf_of(object())
                await trio.to_thread.run_sync(self._close_files, limiter=self._writer_limiter)
            self._stopped.set()

    async def open(self, *, bootstrap: bool, member_name: str | None = None) -> None:
        """Run Ensure (reference 6.3) through the write path, then go online.

        ``patch.global.sql`` (if given and present) runs first and is deleted. When
        not bootstrapping and ``member_name`` is given, this member's row gets its
        new versions and the rolling-upgrade check (6.4) runs: a member ahead raises
        :class:`SchemaVersionError`; members behind make the status "waiting for an
        upgrade" until :meth:`notify_upgrade` or 30 s, then it checks again.
        """
        if not self._running:
            raise DatabaseNotOpenError(str(self.status))
        self.status = DatabaseStatus.STARTING
        try:
            await self._run_patch()
            if not bootstrap and member_name is not None:
                await self._wait_for_members(member_name)
            self._versions = await self._submit(lambda conn: ensure_schema(conn, self._app_updates))
        except BaseException:
            self.status = DatabaseStatus.OFFLINE
            raise
        self.status = DatabaseStatus.ONLINE
        logger.info("%s: database online, schema versions %s", self._member, self._versions)

    async def close(self) -> None:
        """Stop: status offline, queued writes fail, connections closed."""
        self.status = DatabaseStatus.OFFLINE
        self._stop.set()
        self._upgrade.set()
        if self._running:
            await self._stopped.wait()

    def notify_upgrade(self) -> None:
        """Another member finished upgrading (``PATCH /core/internal/database``)."""
        self._upgrade.set()

    # -- public operations ---------------------------------------------------------
    @overload
    async def transaction(self, fn: Callable[[apsw.Connection], apsw.Cursor]) -> list[Any]: ...
    @overload
    async def transaction(self, fn: Callable[[apsw.Connection], T]) -> T: ...

    async def transaction(self, fn: Callable[[apsw.Connection], Any]) -> Any:
        """Run ``fn(conn)`` as one write transaction; return its result once committed.

        A returned cursor is drained into a list of rows (statements must not stay
        in progress). Cancelling the caller does not withdraw a queued transaction:
        it may still commit.
        ``fn`` runs on the writer connection inside a savepoint (do not BEGIN/COMMIT);
        it sees every earlier committed write. SQLite errors become
        :class:`~microtrio.ConflictError` (unique constraint) or
        :class:`~microtrio.BadRequestError`; other exceptions of ``fn`` propagate.
        """
        self._require_online()
        return await self._submit(fn, fenced=True)

    @overload
    async def read(
        self,
        fn: Callable[[apsw.Connection], apsw.Cursor],
        *,
        stale: bool = False,
        inline: bool = False,
    ) -> list[Any]: ...
    @overload
    async def read(
        self, fn: Callable[[apsw.Connection], T], *, stale: bool = False, inline: bool = False
    ) -> T: ...

    async def read(
        self, fn: Callable[[apsw.Connection], Any], *, stale: bool = False, inline: bool = False
    ) -> Any:
        """Run ``fn(conn)`` in a read transaction on a reader connection (a returned
        cursor is drained into a list of rows).

        Linearizable by default (the committer's read barrier first); ``stale=True``
        reads the local state without a round trip.

        ``inline=True`` runs ``fn`` on the event loop instead of a worker thread, which
        saves the thread hand-off (about a quarter of a member's time on a point read).
        Only for reads known to be short, such as a lookup by primary key: every other
        task of the member waits while it runs. If SQLite reports the database busy (a
        checkpoint or recovery in progress), the read goes to a worker thread after all.
        """
        if self.status not in (DatabaseStatus.ONLINE, DatabaseStatus.WAITING):
            raise DatabaseNotOpenError(str(self.status))
        if not stale:
            await self._get_committer().read_barrier()
        return await self._read(fn, inline=inline)

    async def execute_sql(self, query: str) -> list[SQLResult]:
        """``POST /core/internal/sql``: all statements run in ONE transaction.

        A request of only read-only statements is served by :meth:`read`.
        """
        self._require_online()
        statements = split_statements(query)
        if not statements:
            raise BadRequestError("No query provided")
        try:
            return await self.read(lambda conn: run_statements(conn, statements, read_only=True))
        except NotReadOnlyError:
            pass  # a writing statement: the whole request goes through the writer
        except BadRequestError as exc:
            if not isinstance(exc.__cause__, apsw.AuthError):
                raise
            # e.g. PRAGMA user_version = N: refused on readers, replicated by the writer
        request = StatementRequest([(sql, ()) for sql in statements], FLAG_TEXT_RESULTS)
        return await self._execute_request(request)

    async def execute(self, sql: str, params: Params = ()) -> SQLResult:
        """Run one SQL statement with ``params`` as one write transaction (statement API).

        See :meth:`execute_many`; returns the statement's :class:`SQLResult`.
        """
        return (await self.execute_many([(sql, params)]))[0]

    async def execute_many(self, statements: Sequence[tuple[str, Params]]) -> list[SQLResult]:
        """Run ``(sql, params)`` statements, in order, as ONE write transaction on the leader.

        dqlite's model: the statements travel as text and parameters (``None``, ``int``,
        ``float``, ``str``, ``bytes``; a sequence or a mapping of names) to the leader and run
        inside its current write batch on the newest state, so they are never refused as
        stale (unlike :meth:`transaction` on a member that does not lead). Returns once the
        write is committed and applied on THIS member. A statement with result columns
        (``SELECT``, ``... RETURNING``) gives a ``select`` result with its rows (blobs stay
        bytes); others an ``exec`` result with ``rows_affected``; both carry
        ``last_insert_rowid``. A failing statement rolls the whole call back: SQLite errors
        become :class:`~microtrio.ConflictError` (unique constraint) or
        :class:`~microtrio.BadRequestError`; :class:`~microtrio.OutcomeUnknownError` when
        the leader was lost mid-way (the write may have committed).
        """
        self._require_online()
        return await self._execute_request(StatementRequest(normalize_statements(statements)))

    async def _execute_request(self, request: StatementRequest) -> list[SQLResult]:
        committer = self._get_committer()
        reply = await committer.execute_remote(encode_request(request.statements, request.flags))
        if reply is None:  # this member leads (or is alone): join the local writer's batch
            return await self._submit(
                partial(run_request, request=request), fenced=True, inline=True
            )
        return decode_reply(reply)

    async def _serve_remote(self, data: bytes) -> tuple[bytes, int]:
        """The leader's side of :meth:`execute_many` from another member: run the request
        in the writer's batch; return the encoded reply and the applied index the caller
        waits for before it answers (the state that includes this write)."""
        try:
            request = decode_request(data)
            results = await self._submit(
                partial(run_request, request=request), fenced=True, inline=True
            )
            return encode_reply(results), self._get_applier().applied_index
        except MicrotrioError as exc:
            return encode_error_reply(exc), 0

    async def dump(self, *, schema_only: bool = False) -> str:
        """``GET /core/internal/sql``: SQL text of the database (``.dump`` style)."""
        return await self.read(
            lambda conn: dump_database(conn, schema_only=schema_only, skip=PRIVATE_TABLES)
        )

    def schema_versions(self) -> tuple[int, int, list[str]]:
        """(internal, external, API extensions) of this member's code once open."""
        return self._versions[0], self._versions[1], self._extensions.names

    @property
    def applied_index(self) -> int:
        return self._get_applier().applied_index

    @property
    def applier(self) -> Applier:
        return self._get_applier()

    async def snapshot(self) -> DatabaseSnapshot:
        """A consistent copy of the database with its applied index (for Raft)."""
        return await self._get_applier().snapshot()

    async def restore(self, data: bytes) -> None:
        """Replace the whole content with a snapshot's data (applied index from it)."""
        await self._get_applier().restore(data)
        if self.status is DatabaseStatus.ONLINE:
            internal, external = await self._read(current_versions)
            logger.info(
                "%s: restored snapshot at %d, schema (%d, %d)",
                self._member,
                self.applied_index,
                internal,
                external,
            )

    # -- internals -----------------------------------------------------------------
    def _require_online(self) -> None:
        if self.status is not DatabaseStatus.ONLINE:
            raise DatabaseNotOpenError(str(self.status))

    def _get_applier(self) -> Applier:
        if self._applier is None:
            raise DatabaseNotOpenError(str(self.status))
        return self._applier

    def _get_committer(self) -> Committer:
        if self._committer is None:
            raise DatabaseNotOpenError(str(self.status))
        return self._committer

    def _open_files(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # each connection is kept as soon as it is open: a failure later on leaves
        # _close_files what to close
        try:
            conn = self._conn = apsw.Connection(str(self._path), statementcachesize=0)
            conn.set_busy_timeout(_WRITER_BUSY_MS)
            conn.pragma("journal_mode", "wal")
            conn.pragma("synchronous", "full")
            conn.pragma("foreign_keys", True)
            conn.execute(APPLIED_TABLE_SQL)
            for _ in range(self._reader_count):
                reader = apsw.Connection(str(self._path))
                self._readers.append(reader)
                reader.set_busy_timeout(_READER_BUSY_MS)
                reader.pragma("query_only", True)
                reader.authorizer = reader_authorizer
        except apsw.Error as exc:
            raise StateError(f"cannot open database {self._path}: {exc}") from exc
        self._applier = Applier(conn, self._writer_limiter, member=self._member)
        self._committer = self._committer_factory(self._applier)
        self._committer.serve_remote(self._serve_remote)
        if not isinstance(self._committer, LocalCommitter):
            # Replicated: the durable Raft log is the source of truth, so a power loss that
            # takes the last applied transactions from the WAL only rolls the applied index
            # back; the driver replays the log from there (or restores the durable snapshot
            # first when the log no longer reaches back). WAL + NORMAL stays consistent and
            # saves an fsync per applied entry. A single member keeps FULL.
            conn.pragma("synchronous", "normal")
            self._applier.enable_inline_apply()
            try:
                checkpointer = self._checkpointer = apsw.Connection(str(self._path))
                # its checkpoints sync the WAL before and the file after, as the writer's did
                checkpointer.pragma("synchronous", "normal")
            except apsw.Error as exc:
                raise StateError(f"cannot open database {self._path}: {exc}") from exc
            self._wal_writeback = WalWriteback(f"{self._path}-wal")
            self._applier.enable_background_checkpoints()

    async def _checkpoint_loop(self, conn: apsw.Connection) -> None:
        """Run the bulk of the WAL checkpoints the Applier asks for on ``conn``, in a thread
        of its own, while the writer goes on; the writer finishes each (see :mod:`._apply`).
        Between them, start the writeback of the WAL's pages when it asks (a checkpoint
        syncs the WAL itself)."""
        applier = self._get_applier()
        limiter = trio.CapacityLimiter(1)
        writeback = self._wal_writeback
        assert writeback is not None  # opened with the checkpointer
        while True:
            checkpoint, write_back = await applier.wait_background_work()
            if checkpoint:
                self.background_checkpoints += 1
                await trio.to_thread.run_sync(
                    passive_checkpoint, conn, self._member, limiter=limiter
                )
                applier.finish_checkpoint()
            elif write_back and writeback.available:
                await trio.to_thread.run_sync(writeback.kick, limiter=limiter)

    def _close_files(self) -> None:
        if self._wal_writeback is not None:
            self._wal_writeback.close()  # its descriptor; the statistics stay
        if self._checkpointer is not None:
            self._checkpointer.close()
        for reader in self._readers:
            reader.close()
        if self._conn is not None:
            self._conn.close()

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            request.resolve(TxnOutcome(error=DatabaseNotOpenError(str(self.status))))

    async def _submit(
        self, fn: Callable[[apsw.Connection], T], *, fenced: bool = False, inline: bool = False
    ) -> T:
        if not self._running:
            raise DatabaseNotOpenError(str(self.status))
        request = _Request(fn, fenced=fenced, inline=inline)
        # queued without a scheduler pass when there is room (a cancelled caller still
        # queues nothing); the wait for the outcome is the checkpoint
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            await put(self._send, request)
        except trio.ClosedResourceError:
            raise DatabaseNotOpenError(str(self.status)) from None
        await request.done.wait()
        outcome = request.outcome
        assert outcome is not None
        if outcome.error is not None:
            if isinstance(outcome.error, apsw.Error):
                raise map_sqlite_error(outcome.error) from outcome.error
            raise outcome.error
        return cast(T, outcome.value)

    async def _read(self, fn: Callable[[apsw.Connection], T], *, inline: bool = False) -> T:
        limiter = self._reader_limiter
        await take(limiter)  # a free reader without the scheduler round trip of acquire()
        try:
            conn = self._readers.pop()
            try:
                if inline:
                    conn.set_busy_timeout(0)  # never wait for a lock on the event loop
                    try:
                        return _read_txn(conn, fn)
                    except apsw.BusyError:
                        pass  # rare: wait for the lock in a worker thread instead
                    finally:
                        conn.set_busy_timeout(_READER_BUSY_MS)
                return await trio.to_thread.run_sync(_read_txn, conn, fn)
            except apsw.Error as exc:
                raise map_sqlite_error(exc) from exc
            finally:
                self._readers.append(conn)
        finally:
            limiter.release()

    async def _writer_loop(self) -> None:
        while True:
            batch = [await self._recv.receive()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._run_batch(batch)
            finally:
                for request in batch:
                    request.resolve(TxnOutcome(error=OutcomeUnknownError("database stopped")))

    async def _run_batch(self, batch: list[_Request]) -> None:
        applier = self._get_applier()
        committer = self._get_committer()
        conn = self._conn
        assert conn is not None
        fns = [r.fn for r in batch]
        fenced = any(r.fenced for r in batch)
        self._transactions += len(batch)
        need_barrier = fence_checked = False
        for _attempt in range(_MAX_ATTEMPTS):
            if need_barrier:
                # run again on a state that includes what beat us (refused as stale), or
                # that is at least as new as a read index (a fenced batch that changed
                # nothing: its results must not come from a stale local state)
                need_barrier = False
                try:
                    await committer.read_barrier()
                except MicrotrioError as exc:  # no leader now: nothing of the batch committed
                    outcomes = [TxnOutcome(error=exc)] * len(batch)
                    break
            try:
                ran = None
                if all(r.inline for r in batch):
                    ran = self._execute_inline(applier, conn, fns)
                if ran is None:
                    ran = await applier.run_sync(partial(_execute_kept, applier, conn, fns))
                    assert ran is not None  # (None only with a budget)
                outcomes, write, payload = ran
            except apsw.Error as exc:
                logger.error("%s: write batch failed: %s", self._member, exc, exc_info=True)
                outcomes = [TxnOutcome(error=exc)] * len(batch)
                break
            if not write.ops:
                if fenced and not fence_checked:
                    need_barrier = fence_checked = True
                    continue
                break
            try:
                index = await committer.commit(payload)
            except MicrotrioError as exc:
                await applier.drop_held()
                outcomes = [o if o.error is not None else TxnOutcome(error=exc) for o in outcomes]
                break
            self._commits += 1
            if not applier.was_refused(index):
                break
            logger.info("%s: batch refused as stale at %d, re-executing", self._member, index)
            need_barrier = True
        else:
            err = UnavailableError("write batch kept conflicting with concurrent writes")
            outcomes = [o if o.error is not None else TxnOutcome(error=err) for o in outcomes]
        for request, outcome in zip(batch, outcomes, strict=True):
            request.resolve(outcome)

    def _execute_inline(
        self,
        applier: Applier,
        conn: apsw.Connection,
        fns: Sequence[Callable[[apsw.Connection], Any]],
    ) -> tuple[list[TxnOutcome], WriteBatch, bytes] | None:
        """Run a batch of statement requests on the event loop, saving the thread hand-off
        of a small batch; None when it must go to a worker thread: the writer is busy (an
        apply or checkpoint there), the batch needed more than ``INLINE_BATCH_STEPS``, or
        a lock was not free at once (inline never waits; such a batch is rolled back).
        Statements have no effect outside the database."""
        budget = StepBudget(INLINE_BATCH_STEPS)

        def run() -> tuple[list[TxnOutcome], WriteBatch, bytes] | None:
            conn.set_progress_handler(budget.progress, BUDGET_EVERY)
            conn.set_busy_timeout(0)
            try:
                return _execute_kept(applier, conn, fns, budget)
            except apsw.BusyError:
                return None
            finally:
                conn.set_progress_handler(None)
                conn.set_busy_timeout(_WRITER_BUSY_MS)

        done, ran = applier.run_inline(run)
        if not done or ran is None:
            return None  # busy, over budget or a statement met a lock: run it in a thread
        self._inline_batches += 1
        return ran

    async def _run_patch(self) -> None:
        path = self._patch_path
        if path is None:
            return
        text = await trio.to_thread.run_sync(_read_if_exists, path)
        if text is None:
            return
        statements = split_statements(text)
        if statements:
            logger.info("%s: applying %s (%d statements)", self._member, path, len(statements))
            await self._submit(lambda conn: run_statements(conn, statements))
        await trio.to_thread.run_sync(path.unlink)

    async def _wait_for_members(self, member_name: str) -> None:
        internal, external = len(INTERNAL_UPDATES), len(self._app_updates)
        names = self._extensions.names
        own = MemberVersions(member_name, internal, external, names)
        while True:
            others = await self._submit(lambda conn: _record_and_list(conn, own))
            result = compare_versions(own, others)
            if not result.waiting:
                return
            logger.warning(
                "%s: waiting for %d members to upgrade: %s",
                self._member,
                len(result.behind),
                ", ".join(result.behind),
            )
            self.status = DatabaseStatus.WAITING
            self._upgrade = trio.Event()
            with trio.move_on_after(UPGRADE_RETRY_SECONDS):
                await self._upgrade.wait()
            if self._stop.is_set():
                raise DatabaseNotOpenError(str(DatabaseStatus.OFFLINE))
            self.status = DatabaseStatus.STARTING


def _execute_kept(
    applier: Applier,
    conn: apsw.Connection,
    fns: Sequence[Callable[[apsw.Connection], Any]],
    budget: StepBudget | None = None,
) -> tuple[list[TxnOutcome], WriteBatch, bytes] | None:
    """Blocking, with the writer connection: :func:`execute_batch` with ``keep``, a kept
    transaction handed to the Applier at once (no other use of the connection may come in
    between); the outcomes, the batch and its payload. None on the event loop (with a
    ``budget``) when the batch must run again in a thread: over budget, or a statement met
    a lock (inline never waits); nothing of it is kept then."""
    outcomes, write = execute_batch(conn, fns, budget, keep=True)
    if budget is not None and (
        budget.exceeded or any(isinstance(o.error, apsw.BusyError) for o in outcomes)
    ):
        rollback(conn)
        return None
    payload = encode_batch(write)
    if conn.in_transaction:
        applier.hold(payload, write)
    return outcomes, write, payload


def _read_txn(conn: apsw.Connection, fn: Callable[[apsw.Connection], T]) -> T:
    conn.execute("BEGIN")
    try:
        return cast(T, drain(fn(conn)))
    finally:
        rollback(conn)


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _record_and_list(conn: apsw.Connection, own: MemberVersions) -> list[MemberVersions]:
    """Write this member's new versions into its row; return the non-pending members."""
    if not conn.table_exists("main", "core_cluster_members"):
        return []
    conn.execute(
        "UPDATE core_cluster_members SET schema_internal = ?, schema_external = ?, "
        "api_extensions = ? WHERE name = ?",
        (own.internal, own.external, json.dumps(list(own.extensions or [])), own.name),
    )
    members = []
    for name, internal, external, exts in conn.execute(
        "SELECT name, schema_internal, schema_external, api_extensions "
        "FROM core_cluster_members WHERE role != 'PENDING'"
    ):
        try:
            decoded = json.loads(exts) if exts else None
        except ValueError:
            decoded = None
        members.append(
            MemberVersions(
                name, int(internal), int(external), decoded if isinstance(decoded, list) else None
            )
        )
    return members
