"""The in-memory Raft log: entries after a base (compaction) point, plus bookkeeping.

Indexes: ``base`` is the last discarded index (its term is kept as ``base_term``), entries hold
``base + 1 .. last_index``. ``unstable_from`` is the first index not yet handed out for
persistence; ``committed`` and ``applying`` (handed to the application) follow Raft's rules.
"""

from __future__ import annotations

from .._errors import DivergenceError
from ._errors import RaftUsageError
from ._types import Entry

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "applied",
        "applying",
        "base",
        "base_term",
        "committed",
        "entries",
        "unstable_from",
    )

    def __init__(self, base: int = 0, base_term: int = 0) -> None:
        self.base = base
        self.base_term = base_term
        self.entries: list[Entry] = []
        self.committed = base
        self.applying = base
        self.applied = base
        self.unstable_from = base + 1

    # -- queries -----------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.base + 1

    @property
    def last_index(self) -> int:
        return self.base + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    def term(self, index: int) -> int | None:
        """Term of ``index``, or None when it was compacted away or does not exist yet."""
        off = index - self.base
        if off == 0:
            return self.base_term
        if 0 < off <= len(self.entries):
            return self.entries[off - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi) (lo > base); with ``max_bytes``, at least one and then up to the
        limit of data bytes."""
        out = self.entries[lo - self.base - 1 : hi - self.base - 1]
        if max_bytes is not None and len(out) > 1:
            size = 0
            for n, e in enumerate(out):
                size += len(e.data)
                if size > max_bytes and n > 0:
                    return out[:n]
        return out

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term`` (fast backtracking), or base."""
        index = min(index, self.last_index)
        while index > self.base:
            t = self.entries[index - self.base - 1].term
            if t <= term:
                return index
            index -= 1
        return self.base

    # -- mutation ----------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries that continue (or overwrite a suffix of) the log."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.last_index:
            if first <= self.committed:
                raise DivergenceError(
                    f"a leader rewrote committed entry {first} <= {self.committed}"
                )
            del self.entries[first - self.base - 1 :]
            if first < self.unstable_from:
                self.unstable_from = first
        self.entries.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> tuple[int, int | None]:
        """Follower side of AppendEntries. Returns (last new index or -1 on mismatch,
        index of the first appended entry or None)."""
        if not self.match_term(prev_index, prev_term):
            return -1, None
        last_new = prev_index + len(entries)
        start = None
        for k, e in enumerate(entries):
            if e.index <= self.base:
                continue
            t = self.term(e.index)
            if t != e.term:
                start = k
                break
        appended_at: int | None = None
        if start is not None:
            new = list(entries[start:])
            appended_at = new[0].index
            self.append(new)
        self.commit_to(min(commit, last_new))
        return last_new, appended_at

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index:
                raise DivergenceError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index

    def compact_to(self, index: int) -> None:
        """Discard entries up to ``index`` (which must be present)."""
        if index <= self.base:
            return
        term = self.term(index)
        if term is None:
            raise RaftUsageError(f"cannot compact to missing index {index}")
        del self.entries[: index - self.base]
        self.base, self.base_term = index, term
        self.unstable_from = max(self.unstable_from, index + 1)

    def restore(self, index: int, term: int) -> None:
        """Reset the log to a snapshot at (index, term)."""
        self.entries = []
        self.base, self.base_term = index, term
        self.committed = self.applying = self.applied = index
        self.unstable_from = index + 1
