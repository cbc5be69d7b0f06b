"""Crash at every mutating system call of a workload: the directory must always reload.

The workload runs once cleanly to record what ``load()`` returns after each operation. Then,
for every n, it runs again in a fresh directory and "crashes" (a BaseException nothing
catches) at the n-th write / fsync / rename / unlink / truncate. Reloading must succeed and
give the state before the interrupted operation, the state after it, or (for an append that
first truncates a conflicting suffix, newest segment first) a prefix of either that keeps
everything both agree on. This models a process crash (written bytes stay); power loss, where unsynced
bytes vanish, is covered by the torn-tail and damage tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microtrio import CorruptionError
from microtrio._replication import _durable
from microtrio._replication._storage import LogStore
from microtrio.raft import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

SEGMENT = 100  # about one batch per segment


class SimulatedCrash(BaseException):
    pass


def batch(start: int, count: int, term: int) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, b"%d/%d" % (i, term)) for i in range(start, start + count)
    ]


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState.of_voters([1, 2, 3])), b"db@%d" % index)


Operation = Callable[[LogStore], None]

WORKLOAD: list[Operation] = [
    lambda s: s.persist(HardState(1, 1, 0), batch(1, 4, 1), None),
    lambda s: s.persist(HardState(1, 1, 3), batch(5, 3, 1), None),
    lambda s: s.append(batch(8, 3, 1)),
    lambda s: s.append(batch(11, 5, 1)),
    lambda s: s.persist(HardState(2, 2, 3), batch(5, 3, 2), None),  # conflict: cut at 5
    lambda s: s.save_hard_state(HardState(2, 2, 7)),
    lambda s: s.save_snapshot(snap(6, 2)),
    lambda s: s.compact_to(6),
    lambda s: s.append(batch(8, 8, 2)),
    lambda s: s.persist(HardState(3, 0, 30), [], snap(30, 3)),  # install: log dropped
    lambda s: s.persist(HardState(3, 0, 31), batch(31, 2, 3), None),
]


@dataclass(frozen=True)
class Loaded:
    hard_state: HardState
    snapshot_index: int
    entries: tuple[tuple[int, int], ...]  # (index, term)


def reload(directory: Path) -> Loaded:
    with LogStore(directory, segment_size=SEGMENT) as store:
        state = store.load()
    index = state.snapshot.meta.index if state.snapshot else 0
    return Loaded(state.hard_state, index, tuple((e.index, e.term) for e in state.entries))


MUTATING = ("write", "fsync", "replace", "rename", "unlink", "ftruncate")


@contextmanager
def crash_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Raise SimulatedCrash at the ``calls``-th mutating call (0 = never); yield the count."""
    count = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == calls:
                raise SimulatedCrash
            return real(*args, **kwargs)

        return wrapper

    def no_sync(fd: int) -> None:
        """A process crash keeps unsynced bytes, so syncing is only a crash point here."""

    with monkeypatch.context() as patch:
        for name in MUTATING:
            real = no_sync if name == "fsync" else getattr(os, name)
            patch.setattr(os, name, wrap(real))
        patch.setattr(_durable, "_datasync", wrap(no_sync))
        yield count


def run(directory: Path, ops: list[Operation]) -> None:
    store = LogStore(directory, segment_size=SEGMENT)
    store.load()
    try:
        for op in ops:
            op(store)
    finally:
        store.close()


def test_every_crash_point_reloads_consistently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clean run: the state after each operation, and how many calls each one makes.
    clean = tmp_path / "clean"
    states = [reload(clean)]
    boundaries = [0]
    for k in range(len(WORKLOAD)):
        with crash_after(0, monkeypatch) as count:
            run(clean, WORKLOAD[k : k + 1])
        boundaries.append(boundaries[-1] + count[0])
        states.append(reload(clean))
    assert states[-1].snapshot_index == 30 and states[-1].entries == ((31, 3), (32, 3))

    total = boundaries[-1]
    assert total > 40
    for n in range(1, total + 1):
        op = next(k for k in range(len(WORKLOAD)) if boundaries[k + 1] >= n)
        directory = tmp_path / f"crash-{n}"
        directory.mkdir()  # as the clean run's (its first reload made it): same call counts
        with crash_after(n, monkeypatch), pytest.raises(SimulatedCrash):
            run(directory, WORKLOAD)
        try:
            got = reload(directory)
        except CorruptionError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"crash at call {n} (operation {op}) left corruption: {exc}")
        before, after = states[op], states[op + 1]
        if got in (before, after):
            continue
        # A conflicting append cuts the log first, newest segment first: a prefix of either
        # state that keeps what both share is a state some crash can leave.
        shared = os.path.commonprefix([before.entries, after.entries])
        assert got.hard_state in (before.hard_state, after.hard_state), n
        assert got.snapshot_index in (before.snapshot_index, after.snapshot_index), n
        n_got = len(got.entries)
        assert got.entries in (before.entries[:n_got], after.entries[:n_got]), n
        assert len(got.entries) >= len(shared), n
