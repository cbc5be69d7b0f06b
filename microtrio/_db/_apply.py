"""The Applier: the only code that changes the database file.

Every member (the leader included) applies each committed write batch with
:meth:`Applier.apply`, in log order. One SQLite transaction per entry holds both the
batch's effects and the new applied index (table ``microtrio_applied``), so apply
is exactly-once and crash recovery needs nothing: after a restart the applied index
read back from the file says which entries to skip.

``microtrio_applied`` (one row, ``id = 1``):

* ``idx`` - index of the last applied log entry;
* ``term`` - its Raft term (0 for the local committer);
* ``changed_idx`` - index of the last entry that changed data. A batch executed on
  an older state (``base_index < changed_idx``) is refused on every member alike,
  without effect, and its writer retries it (optimistic check; cannot happen with
  the single writer and the local committer).

Small entries of row changes only are applied on the event loop itself, without a thread
hop (:meth:`Applier.enable_inline_apply`, replicated members only): with WAL and
``synchronous=NORMAL`` a commit syncs nothing, and WAL checkpoints (the only part that would
sync) no longer run inside a commit: a WAL hook counts the pages and every
:data:`CHECKPOINT_PAGES` pages a checkpoint is due. Schema statements (an index build may
take long), large entries and restores always run in the thread.

Where the database offers it (:meth:`Applier.enable_background_checkpoints`), a due
checkpoint is done in two steps. The bulk runs in the background, on a connection and in
a thread of its own, while entries go on being applied: copying a thousand pages back into
the database file and its two fsyncs took 15-30 ms on the benchmark machine, which every
write waited for when it all ran on the writer connection. Then, at its next apply, the
writer connection finishes it (:meth:`Applier.finish_checkpoint`): it copies back what was
written meanwhile (its syncs are those of a few pages), and its next write transaction
restarts the WAL from its beginning, which needs a checkpoint that left nothing behind
when the write starts (a background one can hardly promise that while writes go on). From
:data:`WAL_LIMIT_PAGES` on (a long read transaction keeps checkpoints from restarting the
WAL), due checkpoints run on the writer connection only. Between checkpoints, every
:data:`WRITEBACK_PAGES` pages, the same background task has the kernel start writing the
WAL's dirty pages (``_writeback.py``), so that a checkpoint's sync does not flush 16 MiB at
once while the Raft log waits behind it on the same disk.

The member that ran a batch (the leader, or the single member) usually has its effects
already: :func:`~._capture.execute_batch` left them in the writer connection's open
transaction and the writer handed the entry over with :meth:`Applier.hold`. When that
entry comes to be applied on the very state it ran on, the Applier writes the applied
index into that transaction and commits it, instead of rolling it back before and
applying the changesets now (about 0.1 ms less per write on the leader's critical path).
Any other use of the writer connection first rolls a held transaction back (an entry
of another origin, a snapshot, a restore, a checkpoint on the writer, the next batch), and the entry
is then applied like on every other member (or refused as stale).

Changesets are applied with triggers switched off (``SQLITE_DBCONFIG_ENABLE_TRIGGER``)
and foreign keys off: the leader's session already recorded what triggers and
cascades did. Any conflict is divergence: the transaction is rolled back, the
Applier stops and :class:`~microtrio.DivergenceError` is raised.
"""

from __future__ import annotations

import gc
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, final

import apsw
import trio

from .._errors import CorruptionError, DatabaseNotOpenError, DivergenceError, StateError
from .._nowait import take
from ._payload import Op, OpKind, WriteBatch, decode_batch

__all__ = ["APPLIED_TABLE_SQL", "Applier", "DatabaseSnapshot", "passive_checkpoint", "rollback"]

logger = logging.getLogger("microtrio.db")

T = TypeVar("T")

#: An entry up to this size, of row changes only, is applied on the event loop (see above).
INLINE_APPLY_BYTES = 64 << 10
#: Applies in a row without a checkpoint (apply() takes a free lock without one): a
#: catch-up of many small entries yields this often, so heartbeats and the transport run.
APPLY_YIELD_EVERY = 8
#: WAL pages written between two checkpoints, 4x SQLite's auto-checkpoint default: a
#: checkpoint copies each page once however often the WAL holds it (the benchmark's
#: writes at 16 clients, checkpoints in the background: p99 49-58 ms with 1000 pages,
#: 36-47 ms with 4000).
CHECKPOINT_PAGES = 4000
#: WAL pages at which checkpoints move back onto the writer connection (see above).
WAL_LIMIT_PAGES = 4 * CHECKPOINT_PAGES
#: WAL pages between two early writebacks of the WAL in the background (``_writeback.py``):
#: 1 MiB of 4 KiB pages.
WRITEBACK_PAGES = 256

APPLIED_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS microtrio_applied (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL,
    changed_idx INTEGER NOT NULL
);
INSERT OR IGNORE INTO microtrio_applied (id, idx, term, changed_idx) VALUES (1, 0, 0, 0);
"""


@dataclass(frozen=True, slots=True)
class DatabaseSnapshot:
    """A consistent copy of the whole database file at an applied index."""

    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AppliedState:
    index: int
    term: int
    changed_index: int


def read_applied(conn: apsw.Connection) -> AppliedState:
    row = conn.execute("SELECT idx, term, changed_idx FROM microtrio_applied WHERE id = 1").get
    if not isinstance(row, tuple):
        raise StateError("microtrio_applied has no row")
    return AppliedState(int(row[0]), int(row[1]), int(row[2]))


@dataclass(frozen=True, slots=True)
class _Held:
    """The writer connection's open transaction holds ``payload``'s effects on ``state``."""

    payload: bytes
    state: AppliedState
    changes: bool
    inline: bool


@final
class Applier:
    """Applies committed write batches to the writer connection.

    Built by :class:`~microtrio._db.Database`; the replication layer receives it
    through ``committer_factory(applier)``. Blocking work runs in a worker thread
    under the writer's ``CapacityLimiter(1)``, shared with batch execution.
    """

    def __init__(
        self, conn: apsw.Connection, limiter: trio.CapacityLimiter, *, member: str = ""
    ) -> None:
        self._member = member
        self._conn = conn
        self._limiter = limiter
        self._state = read_applied(conn)
        self._failed: DivergenceError | None = None
        self._refused: deque[int] = deque(maxlen=1024)
        self._listeners: list[Callable[[], None]] = []
        self._lock = trio.Lock()
        self._unyielded = 0  # applies since the last checkpoint of apply()
        self._closed = False
        self._inline = False
        self._wal_pages = 0
        self._checkpoint_at = CHECKPOINT_PAGES
        self._background_checkpoints = False
        self._writeback_at = WRITEBACK_PAGES
        self._background_due = trio.Event()
        self._checkpoint_wanted = self._writeback_wanted = False
        self._checkpoint_finish = False
        #: Checkpoints run on the writer connection (statistics, tests).
        self.writer_checkpoints = 0
        #: Entries applied on the event loop / in the worker thread (statistics, tests).
        self.inline_applies = 0
        self.thread_applies = 0
        self._held: _Held | None = None
        #: Entries whose effects were committed from the held transaction (statistics, tests).
        self.held_commits = 0

    def enable_inline_apply(self) -> None:
        """Apply small row-change entries on the event loop (call once the connection runs
        WAL with ``synchronous=NORMAL``); checkpoints move to the worker thread."""
        self._conn.pragma("wal_autocheckpoint", 0)
        self._conn.set_wal_hook(self._wal_hook)
        self._inline = True

    def enable_background_checkpoints(self) -> None:
        """Someone runs due checkpoints and WAL writebacks elsewhere
        (:meth:`wait_background_work`); only a WAL of :data:`WAL_LIMIT_PAGES` is
        checkpointed on the writer connection."""
        self._background_checkpoints = True

    async def wait_background_work(self) -> tuple[bool, bool]:
        """Return once background work is due: whether a checkpoint is (then call
        :meth:`finish_checkpoint` after it) and whether a WAL writeback is (all that fell
        due since the last return)."""
        await self._background_due.wait()
        self._background_due = trio.Event()
        due = self._checkpoint_wanted, self._writeback_wanted
        self._checkpoint_wanted = self._writeback_wanted = False
        return due

    def finish_checkpoint(self) -> None:
        """The background part of a due checkpoint is done: the writer connection checkpoints
        what is left at its next apply (see the module docstring)."""
        self._checkpoint_finish = True

    def _wal_hook(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        if pages < self._wal_pages:  # the WAL was restarted from its beginning
            self._checkpoint_at = CHECKPOINT_PAGES
            self._writeback_at = WRITEBACK_PAGES
        self._wal_pages = pages
        return apsw.SQLITE_OK

    def _inline_batch(self, payload: bytes | None) -> tuple[bool, WriteBatch | None]:
        """Whether the entry may be applied on the event loop, and its decoded batch
        (decoded once: the apply itself reuses it)."""
        if not self._inline:
            return False, None
        if not payload:
            return True, None
        if len(payload) > INLINE_APPLY_BYTES:
            return False, None
        try:
            batch = decode_batch(payload)
        except CorruptionError:
            return False, None  # the thread path reports it
        return self._inline_ops(len(payload), batch.ops), batch

    def _inline_ops(self, size: int, ops: tuple[Op, ...]) -> bool:
        """Whether committing ``ops`` (``size`` bytes encoded) may run on the event loop:
        inline apply enabled (no commit syncs), small, row changes only."""
        return (
            self._inline
            and size <= INLINE_APPLY_BYTES
            and all(op.kind is not OpKind.SQL for op in ops)
        )

    def _run_inline(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run ``fn`` here if the writer connection is free (else (False, None))."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            return False, None
        try:
            return True, fn()
        finally:
            self._limiter.release_on_behalf_of(self)

    def run_inline(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run short, bounded ``fn`` on the event loop if the writer connection is free
        (no thread hand-off); (False, None) when it is busy (use :meth:`run_sync`).
        A held transaction is rolled back first."""
        return self._run_inline(partial(self._after_drop, fn))

    def hold(self, payload: bytes, batch: WriteBatch) -> None:
        """The writer connection's open transaction holds ``batch`` (encoded: ``payload``),
        run on the current applied state: commit it when ``payload`` is applied next (see
        the module docstring). Call right after the batch ran, before any checkpoint."""
        if not self._conn.in_transaction:
            raise StateError("hold() needs the batch's transaction open")
        inline = self._inline_ops(len(payload), batch.ops)
        self._held = _Held(payload, self._state, bool(batch.ops), inline)

    async def drop_held(self) -> None:
        """Roll back a held transaction now (its entry's fate is unknown: it may still be
        applied later, then like any other entry)."""
        if self._held is not None:
            await self.run_sync(lambda: None)

    def _drop_held(self) -> None:
        """Blocking, with the writer connection's limiter: roll a held transaction back
        (any transaction left open is one: nothing else leaves one)."""
        self._held = None
        rollback(self._conn)

    def _after_drop(self, fn: Callable[..., T], *args: Any) -> T:
        self._drop_held()
        return fn(*args)

    @property
    def applied_index(self) -> int:
        """Index of the last applied entry."""
        return self._state.index

    @property
    def applied_term(self) -> int:
        return self._state.term

    @property
    def changed_index(self) -> int:
        """Index of the last applied entry that changed data."""
        return self._state.changed_index

    def close(self) -> None:
        """The database is stopping: later calls raise :class:`DatabaseNotOpenError`."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseNotOpenError("Database is offline")

    def was_refused(self, index: int) -> bool:
        """Whether the (recent) entry at ``index`` was refused as stale (no effect)."""
        return index in self._refused

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the trio thread) after every apply and restore."""
        self._listeners.append(callback)

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` on the writer's thread limiter (a held transaction is
        rolled back first)."""
        return await self._run_sync(partial(self._after_drop, fn))

    async def _run_sync(self, fn: Callable[[], T]) -> T:
        self._unyielded = 0  # (a thread hand-off is a checkpoint)
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def apply(self, index: int, payload: bytes | None, *, term: int = 0) -> None:
        """Apply the committed entry ``index``; ``payload`` None or empty only advances the index.

        Entries at or below the applied index are skipped (idempotent).
        """
        # A free lock is taken without a scheduler pass (``_nowait.take``): on the write
        # path that pass is one of a few per write on every member.
        # Fairness instead: a run of inline applies yields every APPLY_YIELD_EVERY, so a
        # catch-up of thousands of small entries still lets heartbeats and the transport
        # run in between (entries applied in a worker thread yield anyway).
        if self._unyielded >= APPLY_YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing applied
        await take(self._lock)
        self._unyielded += 1
        try:
            applied = await self._apply_locked(index, payload, term)
        finally:
            self._lock.release()
        if applied:
            self._notify()

    async def _apply_locked(self, index: int, payload: bytes | None, term: int) -> bool:
        """The body of :meth:`apply`, with the lock held; whether the entry was new."""
        self._check_open()
        if self._failed is not None:
            raise DivergenceError(f"database diverged earlier: {self._failed}")
        if index <= self._state.index:
            logger.debug(
                "%s: skipping entry %d (applied %d)", self._member, index, self._state.index
            )
            return False
        try:
            state = await self._commit_if_held(index, term, payload)
            if state is None:
                state = await self._apply_entry(index, term, payload)
            self._state = state
        except DivergenceError as exc:
            self._failed = exc
            logger.error("%s: entry %d could not be applied: %s", self._member, index, exc)
            raise
        if self._checkpoint_finish:
            self._checkpoint_finish = False
            await self.run_sync(self._checkpoint)
        elif self._wal_pages >= self._checkpoint_at:
            self._checkpoint_at = self._wal_pages + CHECKPOINT_PAGES
            if self._background_checkpoints and self._wal_pages < WAL_LIMIT_PAGES:
                self._checkpoint_wanted = True
                self._background_due.set()
            else:
                await self.run_sync(self._checkpoint)
        elif self._background_checkpoints and self._wal_pages >= self._writeback_at:
            self._writeback_at = self._wal_pages + WRITEBACK_PAGES
            self._writeback_wanted = True
            self._background_due.set()
        return True

    async def _commit_if_held(
        self, index: int, term: int, payload: bytes | None
    ) -> AppliedState | None:
        """Commit the held transaction if it is this entry's, on the state it ran on."""
        held = self._held
        if held is None or held.payload != payload or held.state != self._state:
            return None
        commit = partial(self._commit_held, index, term)
        done, state = self._run_inline(commit) if held.inline else (False, None)
        if not done:
            state = await self._run_sync(commit)
        return state

    async def _apply_entry(self, index: int, term: int, payload: bytes | None) -> AppliedState:
        apply = partial(self._after_drop, self._apply_sync, index, term, payload)
        inline, decoded = self._inline_batch(payload)
        if inline:
            done, state = self._run_inline(partial(apply, decoded))
            if done:
                # (no checkpoint here: apply() yields every APPLY_YIELD_EVERY of these)
                self.inline_applies += 1
                assert state is not None
                return state
        self.thread_applies += 1
        return await self._run_sync(apply)

    def _commit_held(self, index: int, term: int) -> AppliedState | None:
        """Blocking: write the applied index into the held transaction and commit it;
        None (and nothing held any more) when that failed: apply the entry instead."""
        held, self._held = self._held, None
        conn = self._conn
        if held is None or not conn.in_transaction:
            return None  # rolled back meanwhile (it needs the limiter, not the apply lock)
        changed = index if held.changes else held.state.changed_index
        try:
            conn.execute(
                "UPDATE microtrio_applied SET idx = ?, term = ?, changed_idx = ? WHERE id = 1",
                (index, term, changed),
            )
            if conn.changes() != 1:
                raise StateError("microtrio_applied has no row")
            conn.execute("COMMIT")
        except (apsw.Error, StateError) as exc:
            logger.warning(
                "%s: committing entry %d as run failed (%s): applying it", self._member, index, exc
            )
            rollback(self._conn)
            return None
        self.held_commits += 1
        return AppliedState(index, term, changed)

    def _checkpoint(self) -> None:
        # the next one is due after another CHECKPOINT_PAGES pages (the WAL hook starts
        # counting again when the WAL restarts from its beginning, which needs no reader
        # behind)
        self.writer_checkpoints += 1
        self._checkpoint_at = self._wal_pages + CHECKPOINT_PAGES
        passive_checkpoint(self._conn, self._member)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # -- blocking part -------------------------------------------------------------
    def _apply_sync(
        self, index: int, term: int, payload: bytes | None, batch: WriteBatch | None = None
    ) -> AppliedState:
        conn = self._conn
        state = self._state
        ops: tuple[Op, ...] = ()
        if payload:
            try:
                if batch is None:
                    batch = decode_batch(payload)
            except CorruptionError as exc:
                raise DivergenceError(f"entry {index}: {exc}") from exc
            if batch.ops and batch.base_index < state.changed_index:
                logger.info(
                    "%s: refusing entry %d: executed at %d, data changed at %d",
                    self._member,
                    index,
                    batch.base_index,
                    state.changed_index,
                )
                self._refused.append(index)
            else:
                ops = batch.ops
        changed = index if ops else state.changed_index
        conn.pragma("foreign_keys", False)
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    _apply_op(conn, index, op)
                conn.execute(
                    "UPDATE microtrio_applied SET idx = ?, term = ?, changed_idx = ? WHERE id = 1",
                    (index, term, changed),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
            conn.pragma("foreign_keys", True)
        return AppliedState(index, term, changed)

    # -- snapshots -----------------------------------------------------------------
    async def snapshot(self) -> DatabaseSnapshot:
        """A consistent copy of the database (backup API) with its applied index."""
        async with self._lock:
            self._check_open()
            return await self.run_sync(self._snapshot_sync)

    def _snapshot_sync(self) -> DatabaseSnapshot:
        mem = apsw.Connection(":memory:")
        try:
            with mem.backup("main", self._conn, "main") as backup:
                backup.step(-1)
            state = read_applied(mem)
            return DatabaseSnapshot(state.index, state.term, _rollback_mode(mem.serialize("main")))
        finally:
            mem.close()

    async def restore(self, data: bytes) -> None:
        """Replace the whole database with a snapshot's ``data`` (atomically)."""
        async with self._lock:
            self._check_open()
            self._state = await self.run_sync(lambda: self._restore_sync(data))
            self._failed = None
        self._notify()

    def _restore_sync(self, data: bytes) -> AppliedState:
        mem = apsw.Connection(":memory:")
        try:
            try:
                mem.deserialize("main", _rollback_mode(data))
                if mem.execute("PRAGMA integrity_check").get != "ok":
                    raise CorruptionError("snapshot failed the integrity check")
                state = read_applied(mem)
            except apsw.Error as exc:
                raise CorruptionError(f"invalid database snapshot: {exc}") from exc
            with self._conn.backup("main", mem, "main") as backup:
                backup.step(-1)
            return state
        finally:
            mem.close()


def passive_checkpoint(conn: apsw.Connection, member: str = "") -> None:
    """Copy what the WAL holds back into the database file, without waiting for readers
    or writers (blocking). Another checkpoint running at the same time makes this one a
    no-op."""
    try:
        frames, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
    except apsw.BusyError:
        logger.debug("%s: WAL checkpoint: busy", member)
        return
    logger.debug("%s: WAL checkpoint: %d of %d frames", member, done, frames)


def rollback(conn: apsw.Connection) -> None:
    """Roll back the open transaction; statements left in progress are collected first."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except apsw.BusyError:
        gc.collect()  # unreferenced cursors in cycles still hold statements
        conn.execute("ROLLBACK")


def _rollback_mode(data: bytes) -> bytes:
    """Mark an image as a rollback-journal database (header bytes 18-19), as a WAL-mode
    file's pages cannot be opened from memory otherwise."""
    if len(data) >= 20 and data[:16] == b"SQLite format 3\x00" and data[18:20] != b"\x01\x01":
        return data[:18] + b"\x01\x01" + data[20:]
    return data


def _apply_op(conn: apsw.Connection, index: int, op: Op) -> None:
    try:
        if op.kind is OpKind.CHANGESET:
            conflicts: list[str] = []

            def on_conflict(reason: int, change: Any) -> int:
                conflicts.append(f"{apsw.mapping_session_conflict.get(reason, reason)}: {change}")
                return apsw.SQLITE_CHANGESET_ABORT

            try:
                apsw.Changeset.apply(op.data, conn, conflict=on_conflict)
            except apsw.AbortError as exc:
                raise DivergenceError(
                    f"entry {index}: conflict applying changeset: {'; '.join(conflicts)}"
                ) from exc
        elif op.kind is OpKind.SQL:
            conn.execute(op.data.decode("utf-8"))
        elif op.kind is OpKind.SEQUENCE:
            for name, seq in json.loads(op.data).items():
                conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (seq, name))
                if conn.changes() == 0:
                    conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq)
                    )
    except apsw.Error as exc:
        raise DivergenceError(f"entry {index}: cannot apply {op.kind.name}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DivergenceError(f"entry {index}: malformed {op.kind.name} op: {exc}") from exc
