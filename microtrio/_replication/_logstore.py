"""Durable Raft storage: hard state, a segmented entry log, snapshots (issue 4).

Theory of operation
-------------------
A :class:`LogStore` owns one directory (the daemon uses ``<state>/database/raft/``)::

    LOCK                          flock'd while a store has the directory open
    hardstate                     term, vote, commit (replaced atomically; see _snapshots.py)
    commit                        the latest commit index, rewritten in place, never synced
    log-<first index>.seg         entry records in index order (format in _segments.py)
    snapshot-<term>-<index>.snap  the latest snapshot (older ones are removed once it is durable)
    *.tmp                         leftovers of interrupted atomic writes: ignored and removed

Only the newest segment is ever written. ``append`` writes one batch with one ``write`` and
one ``fdatasync`` (group fsync); a batch goes whole into the newest segment, and a new one is
started (written as a tmp file and renamed in) once the newest has reached ``segment_size``.
A hard state that changes only its commit index (almost every Ready) costs no fsync: the
commit goes to the ``commit`` hint (see ``_durable.py``); the hard-state file, with its tmp
file, fsync, rename and directory fsync, is replaced only when the term or the vote
changes. ``load`` takes the larger of the two commit indexes; a hint lost or torn by a
power loss leaves the file's older commit, a safe lower bound (every entry at or below any
commit index written was durable before it was written).
``truncate_from`` removes segments newest first and cuts the one holding the cut point, then
makes both durable before anything new is written, so that every crash leaves a contiguous
prefix. ``compact_to`` removes whole segments that lie entirely at or below the snapshot.

Installing a snapshot follows the Raft paper (section 7): if the log holds the snapshot's last
entry with the same term, the entries after it are kept; otherwise the whole log is dropped.
A crash between writing the snapshot and dropping the log is finished on the next ``load``.

``load`` verifies everything: a damaged tail of the newest segment (a write whose fsync never
returned) is cut off with a warning, unless it reaches an entry at or below the durable
commit index; any other damage raises :class:`microtrio.CorruptionError` naming the file and
offset. Nothing is ever silently repaired.

The store's methods block: from trio use :class:`~microtrio._replication._storage.AsyncLogStore`
(or ``open_log_store``), which runs them in a worker thread, one at a time. OSError is mapped to
:class:`microtrio.StateError`; after a failed write the store refuses further writes (a failed
fsync leaves the file in an unknown state, so carrying on could lose acknowledged data).
"""

from __future__ import annotations

import fcntl
import logging
import os
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import final

from .._errors import CorruptionError, StateError
from ..raft import Entry, HardState, PersistedState, Snapshot
from ._durable import (
    COMMIT_HINT_NAME,
    HINT_SIZE,
    decode_commit_hint,
    encode_commit_hint,
    fsync_dir,
    rewrite_in_place,
    sync_data,
    write_all,
)
from ._segments import (
    HEADER_SIZE,
    SegmentScan,
    encode_header,
    encode_records,
    parse_segment_name,
    scan_segment,
    segment_name,
)
from ._snapshots import (
    list_snapshots,
    read_hard_state,
    read_snapshot,
    remove_snapshots_before,
    write_hard_state,
    write_snapshot,
)

__all__ = ["DEFAULT_SEGMENT_SIZE", "LogStore", "LogStoreStatistics", "PendingAppend"]

logger = logging.getLogger("microtrio.replication.storage")

DEFAULT_SEGMENT_SIZE = 8 << 20


@dataclass(slots=True)
class _Segment:
    """In-memory view of one segment file: where each record starts and its term."""

    first_index: int
    path: Path
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    terms: array[int] = field(default_factory=lambda: array("Q"))
    size: int = HEADER_SIZE

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


@final
@dataclass(frozen=True, slots=True)
class PendingAppend:
    """An append checked and encoded by :meth:`LogStore.prepare_append`, to be written."""

    fd: int  # the newest segment, open for appending
    offset: int  # where ``data`` goes: the segment's current end
    data: bytes
    sizes: list[int]
    entries: Sequence[Entry]


@final
@dataclass(frozen=True, slots=True)
class LogStoreStatistics:
    first_index: int  # first entry held in the log (may be at or below the snapshot)
    last_index: int  # last durable index (entries or snapshot); 0 when empty
    segments: int
    snapshot_index: int
    hard_state: HardState


@final
class LogStore:
    """Durable Raft state in one directory (blocking; see :class:`AsyncLogStore`).

    Call :meth:`load` first; every other method except :meth:`load_snapshot` and
    :meth:`close` needs it. Argument errors (non-contiguous entries, a gap, truncating a
    committed entry) raise ValueError; I/O failures raise :class:`microtrio.StateError`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        name: str = "",
    ) -> None:
        if segment_size <= HEADER_SIZE:
            raise ValueError("segment_size is too small")
        self._dir = Path(directory)
        self._name = name or str(self._dir)  # prefix of every log line (the member's name)
        self._segment_size = segment_size
        self._segments: list[_Segment] | None = None
        self._fd: int | None = None  # newest segment, open for appending
        self._lock_fd: int | None = None
        self._hint_fd: int | None = None  # the commit hint, open for rewriting
        self._hard_state = HardState()  # the latest, commit included
        self._saved_hard_state = HardState()  # what the hard-state file holds
        self._snapshot_index = 0
        self._snapshot_term = 0
        self._next_index = 1
        self._failed: str | None = None

    @property
    def directory(self) -> Path:
        return self._dir

    def __enter__(self) -> LogStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening and loading --------------------------------------------------------------

    def load(self) -> PersistedState:
        """Open the directory (creating it), verify it, and return what Raft restarts from."""
        if self._segments is not None:
            raise StateError(f"{self._dir}: log store already loaded")
        try:
            with self._io("load"):
                if not self._dir.is_dir():
                    self._dir.mkdir(mode=0o700, parents=True)
                    fsync_dir(self._dir.parent)
                self._lock()
                return self._load()
        except BaseException:
            self._release()
            self._segments = None
            raise

    def _lock(self) -> None:
        fd = os.open(self._dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"{self._dir}: log store is already open elsewhere") from None
        self._lock_fd = fd

    def _load(self) -> PersistedState:
        for name in os.listdir(self._dir):
            if name.endswith(".tmp"):
                logger.info("%s: removing leftover %s of an interrupted write", self._name, name)
                (self._dir / name).unlink()
        self._saved_hard_state = saved = read_hard_state(self._dir)
        self._hard_state = HardState(saved.term, saved.vote, max(saved.commit, self._read_hint()))
        snapshots = list_snapshots(self._dir)
        snapshot = read_snapshot(snapshots[-1][2]) if snapshots else None
        if snapshot is not None:
            self._snapshot_index, self._snapshot_term = snapshot.meta.index, snapshot.meta.term
            if len(snapshots) > 1:  # a crash came between a new snapshot and the cleanup
                remove_snapshots_before(self._dir, snapshots[-1][2])
        scans = self._scan_segments()
        self._segments = [
            _Segment(
                s.first_index, self._dir / segment_name(s.first_index), s.offsets, s.terms, s.end
            )
            for s in scans
        ]
        self._next_index = (self._segments[-1].last_index + 1) if self._segments else 1
        self._reconcile_with_snapshot()
        last = max(self._next_index - 1, self._snapshot_index)
        if self._hard_state.commit > last:
            raise CorruptionError(
                f"{self._dir}: commit index {self._hard_state.commit} is beyond the last durable "
                f"entry {last}: committed entries are missing"
            )
        self._open_newest()
        entries = (
            tuple(e for s in scans for e in s.entries if e.index > self._snapshot_index)
            if self._segments
            else ()
        )
        if entries and entries[0].term < self._snapshot_term:
            raise CorruptionError(
                f"{self._dir}: entry {entries[0].index} has term {entries[0].term} below the "
                f"snapshot's term {self._snapshot_term}"
            )
        logger.debug(
            "%s: loaded %s, snapshot %d, %d entries",
            self._name,
            self._hard_state,
            self._snapshot_index,
            len(entries),
        )
        return PersistedState(hard_state=self._hard_state, snapshot=snapshot, entries=entries)

    def _read_hint(self) -> int:
        """The commit hint (0 when missing or torn: it is never synced), opened for rewrites."""
        path = self._dir / COMMIT_HINT_NAME
        self._hint_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        buf = os.read(self._hint_fd, HINT_SIZE)  # rewrites never shorten the file
        commit = decode_commit_hint(buf)
        if commit is None and buf:
            logger.info("%s: ignoring a damaged commit hint (a power loss?)", self._name)
        return commit or 0

    def _scan_segments(self) -> list[SegmentScan]:
        found = sorted(
            (index, name)
            for name in os.listdir(self._dir)
            if (index := parse_segment_name(name)) is not None
        )
        scans: list[SegmentScan] = []
        prev_term = 0
        for position, (first, name) in enumerate(found):
            path = self._dir / name
            if scans:
                expected = scans[-1].first_index + len(scans[-1].entries)
                if first != expected:
                    raise CorruptionError(
                        f"{path}: offset 0: gap in the log: expected a segment starting at "
                        f"entry {expected}, found {first}"
                    )
            elif first < 1 or first > self._snapshot_index + 1:
                raise CorruptionError(
                    f"{path}: offset 0: gap in the log: the first segment starts at entry {first} "
                    f"but the snapshot covers only up to {self._snapshot_index}"
                )
            newest = position == len(found) - 1
            scan = scan_segment(
                path, path.read_bytes(), name_index=first, newest=newest, prev_term=prev_term
            )
            if scan.damage is not None:
                self._cut_torn_tail(path, scan)
            if scan.terms:
                prev_term = scan.terms[-1]
            scans.append(scan)
        return scans

    def _cut_torn_tail(self, path: Path, scan: SegmentScan) -> None:
        lost = scan.first_index + len(scan.entries)
        if lost <= self._hard_state.commit:
            raise CorruptionError(
                f"{path}: offset {scan.end}: {scan.damage} at entry {lost}, which is at or below "
                f"the commit index {self._hard_state.commit}"
            )
        logger.warning(
            "%s: %s: offset %d: %s; truncating a torn tail of %d bytes (entries from %d were "
            "never acknowledged)",
            self._name,
            path,
            scan.end,
            scan.damage,
            scan.size - scan.end,
            lost,
        )
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, scan.end)
            sync_data(fd)
        finally:
            os.close(fd)

    def _reconcile_with_snapshot(self) -> None:
        """Finish an install that crashed after the snapshot was durable (see module doc)."""
        if not self._segments:
            self._next_index = self._snapshot_index + 1
            return
        if not self._snapshot_index:
            return
        last = self._next_index - 1
        term = self._term_at(self._snapshot_index)
        if last < self._snapshot_index or (term is not None and term != self._snapshot_term):
            logger.warning(
                "%s: log (up to %d) does not continue the snapshot at %d/term %d: dropping it "
                "(finishing an interrupted snapshot install)",
                self._name,
                last,
                self._snapshot_index,
                self._snapshot_term,
            )
            self._drop_segments(0)
            self._next_index = self._snapshot_index + 1

    # -- writing --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Durably append ``entries`` (one fsync); a conflicting suffix is truncated first."""
        segments = self._require_loaded()
        if not entries:
            return
        data, sizes = self._check_and_encode(entries)  # before truncating: it may refuse
        first = entries[0].index
        if first < self._next_index:
            self.truncate_from(first)
        with self._io("append", write=True):
            newest = segments[-1] if segments else None
            if newest is None or self._fd is None or newest.size >= self._segment_size:
                newest = self._new_segment(first, data)
            else:
                write_all(self._fd, data)
                sync_data(self._fd)
            self._record(newest, entries, sizes)

    def prepare_append(self, entries: Sequence[Entry]) -> PendingAppend | None:
        """The first half of an append made durable by the caller (the io_uring path).

        When ``entries`` simply extend the newest segment (no conflicting suffix to cut, no
        new segment to start), checks and encodes them as :meth:`append` does and returns
        what to write; the caller writes ``data`` durably at the end of ``fd`` and then
        calls :meth:`append_written` (or :meth:`append_failed`), with no other call in
        between. Returns None when :meth:`append` must do it all."""
        segments = self._require_loaded()
        if (
            not entries
            or entries[0].index != self._next_index
            or not segments
            or self._fd is None
            or segments[-1].size >= self._segment_size
        ):
            return None
        data, sizes = self._check_and_encode(entries)
        return PendingAppend(self._fd, segments[-1].size, data, sizes, entries)

    def append_written(self, pending: PendingAppend) -> None:
        """Record an append prepared by :meth:`prepare_append` once its data is durable."""
        segments = self._require_loaded()
        assert pending.fd == self._fd and pending.offset == segments[-1].size
        self._record(segments[-1], pending.entries, pending.sizes)

    def append_failed(self, exc: OSError) -> StateError:
        """The store is unusable after a prepared append failed, as after :meth:`append`
        failing; returns the error to raise."""
        return self._write_failed("append", exc)

    def _check_and_encode(self, entries: Sequence[Entry]) -> tuple[bytes, list[int]]:
        first = entries[0].index
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(f"entries are not contiguous at index {entry.index}")
            if offset and entry.term < entries[offset - 1].term:
                raise ValueError(f"entry {entry.index} has a lower term than its predecessor")
        if first > self._next_index:
            raise ValueError(
                f"appending entry {first} would leave a gap after {self._next_index - 1}"
            )
        if first <= self._snapshot_index:
            raise ValueError(
                f"entry {first} is already covered by the snapshot at {self._snapshot_index}"
            )
        prev_term = self._term_at(first - 1)
        if prev_term is None:
            prev_term = self._snapshot_term if first - 1 == self._snapshot_index else 0
        if entries[0].term < prev_term:
            raise ValueError(f"entry {first} has a lower term than entry {first - 1}")
        return encode_records(entries)

    def _record(self, segment: _Segment, entries: Sequence[Entry], sizes: Sequence[int]) -> None:
        offset = segment.size
        for entry, size in zip(entries, sizes, strict=True):
            segment.offsets.append(offset)
            segment.terms.append(entry.term)
            offset += size
        segment.size = offset
        self._next_index = entries[-1].index + 1

    def _new_segment(self, first: int, data: bytes) -> _Segment:
        """Start a segment holding ``data``: written as a tmp file, renamed in when durable."""
        assert self._segments is not None
        path = self._dir / segment_name(first)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            write_all(fd, encode_header(first))
            write_all(fd, data)
            sync_data(fd)
            os.replace(tmp, path)
            fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        segment = _Segment(first, path)
        self._segments.append(segment)
        logger.debug("%s: started segment %s", self._name, path.name)
        return segment

    def truncate_from(self, index: int) -> None:
        """Durably drop the entries at ``index`` and after (a conflicting suffix)."""
        segments = self._require_loaded()
        if index >= self._next_index:
            return
        if index <= self._hard_state.commit:
            raise ValueError(
                f"refusing to truncate committed entry {index} "
                f"(commit index {self._hard_state.commit})"
            )
        if index <= self._snapshot_index:
            raise ValueError(f"entry {index} is covered by the snapshot at {self._snapshot_index}")
        with self._io("truncate", write=True):
            keep = next(k for k in range(len(segments)) if segments[k].last_index >= index)
            if segments[keep].first_index == index:
                self._drop_segments(keep)
            else:
                self._drop_segments(keep + 1)
                segment = segments[-1]
                cut = index - segment.first_index
                segment.size = segment.offsets[cut]
                del segment.offsets[cut:]
                del segment.terms[cut:]
                assert self._fd is not None
                os.ftruncate(self._fd, segment.size)
                sync_data(self._fd)
            self._next_index = index

    def _drop_segments(self, keep: int) -> None:
        """Delete segments ``[keep:]`` newest first (a crash leaves a prefix), durably."""
        segments = self._segments
        assert segments is not None
        if keep >= len(segments):
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        while len(segments) > keep:
            segments.pop().path.unlink()
        fsync_dir(self._dir)
        self._open_newest()

    def _open_newest(self) -> None:
        if self._segments and self._fd is None:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def save_hard_state(self, hard_state: HardState) -> None:
        """Record ``hard_state``: a new term or vote replaces the hard-state file atomically
        (tmp + fsync + rename + fsync directory) before returning; a new commit index alone
        is written to the commit hint without any sync (see the module docstring)."""
        self._require_loaded()
        last = max(self._next_index - 1, self._snapshot_index)
        if hard_state.commit > last:
            raise ValueError(
                f"commit index {hard_state.commit} is beyond the last durable entry {last}"
            )
        saved = self._saved_hard_state
        with self._io("save hard state", write=True):
            if (
                hard_state.term != saved.term
                or hard_state.vote != saved.vote
                or self._hint_fd is None
            ):
                write_hard_state(self._dir, hard_state)
                self._saved_hard_state = hard_state
            elif hard_state.commit != self._hard_state.commit:
                rewrite_in_place(self._hint_fd, encode_commit_hint(hard_state.commit))
        self._hard_state = hard_state

    def commit_only(self, hard_state: HardState | None) -> bool:
        """Whether persisting ``hard_state`` is at most a commit-hint rewrite: no term or
        vote change, so :meth:`save_hard_state` does one small ``pwrite`` into the page
        cache and no sync (cheap enough to run on the event loop)."""
        saved = self._saved_hard_state
        return self._hint_fd is not None and (
            hard_state is None or (hard_state.term == saved.term and hard_state.vote == saved.vote)
        )

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` durably, then remove older snapshot files. The log is untouched."""
        self._require_loaded()
        if snapshot.meta.index < self._snapshot_index:
            raise ValueError(
                f"snapshot at {snapshot.meta.index} is older than the one at {self._snapshot_index}"
            )
        with self._io("save snapshot", write=True):
            path = write_snapshot(self._dir, snapshot)
            self._snapshot_index, self._snapshot_term = snapshot.meta.index, snapshot.meta.term
            remove_snapshots_before(self._dir, path)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """Save a snapshot received from the leader and fit the log to it (Raft section 7)."""
        self.save_snapshot(snapshot)
        index = snapshot.meta.index
        if self._term_at(index) == snapshot.meta.term:
            self.compact_to(index)
            return
        with self._io("install snapshot", write=True):
            self._drop_segments(0)
        self._next_index = index + 1

    def compact_to(self, index: int) -> None:
        """Delete whole segments whose entries all lie at or below ``index`` (<= the snapshot)."""
        segments = self._require_loaded()
        if index > self._snapshot_index:
            raise ValueError(
                f"cannot compact to {index}: the snapshot only covers {self._snapshot_index}"
            )
        drop = 0
        while drop < len(segments) - 1 and segments[drop].last_index <= index:
            drop += 1
        if not drop:
            return
        with self._io("compact", write=True):
            for segment in segments[:drop]:
                segment.path.unlink()
            del segments[:drop]
            fsync_dir(self._dir)
        logger.debug("%s: compacted to %d (%d segments removed)", self._name, index, drop)

    def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """Persist one Ready: snapshot (installed), then entries, then hard state if changed."""
        if snapshot is not None:
            self.install_snapshot(snapshot)
        if entries:
            self.append(entries)
        if hard_state is not None and hard_state != self._hard_state:
            self.save_hard_state(hard_state)

    # -- reading and housekeeping ---------------------------------------------------------

    def load_snapshot(self) -> Snapshot | None:
        """The latest snapshot on disk, fully verified, or None."""
        with self._io("load snapshot"):
            found = list_snapshots(self._dir) if self._dir.is_dir() else []
            return read_snapshot(found[-1][2]) if found else None

    def statistics(self) -> LogStoreStatistics:
        segments = self._require_loaded()
        return LogStoreStatistics(
            first_index=segments[0].first_index if segments else self._next_index,
            last_index=max(self._next_index - 1, self._snapshot_index),
            segments=len(segments),
            snapshot_index=self._snapshot_index,
            hard_state=self._hard_state,
        )

    def close(self) -> None:
        """Release the directory. Everything acknowledged is already durable."""
        self._release()
        self._segments = None

    def _release(self) -> None:
        for fd in (self._fd, self._hint_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._hint_fd = self._lock_fd = None

    def _term_at(self, index: int) -> int | None:
        for segment in reversed(self._segments or ()):
            if segment.first_index <= index <= segment.last_index:
                return segment.terms[index - segment.first_index]
        return None

    def _require_loaded(self) -> list[_Segment]:
        if self._segments is None:
            raise StateError(f"{self._dir}: log store is not loaded (call load() first)")
        if self._failed is not None:
            raise StateError(f"{self._dir}: log store is unusable after a failed {self._failed}")
        return self._segments

    @contextmanager
    def _io(self, what: str, *, write: bool = False) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if write:
                raise self._write_failed(what, exc) from exc
            raise StateError(f"{self._dir}: {what} failed: {exc}") from exc

    def _write_failed(self, what: str, exc: OSError) -> StateError:
        """Mark the store unusable after a failed write; returns the error to raise."""
        self._failed = what
        return StateError(f"{self._dir}: {what} failed: {exc}")
