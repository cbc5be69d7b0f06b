"""Unit tests of the in-memory log and of per-follower progress (flow control states)."""

from __future__ import annotations

import pytest
from _rafttest import entries

from microtrio import DivergenceError
from microtrio.raft import ProgressState
from microtrio.raft._log import RaftLog
from microtrio.raft._progress import Progress


def make_log(*terms: int) -> RaftLog:
    log = RaftLog()
    log.append(entries(*terms))
    return log


def test_log_terms_and_bounds() -> None:
    log = make_log(1, 1, 2, 3)
    assert (log.first_index, log.last_index, log.last_term()) == (1, 4, 3)
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, None]


def test_find_conflict_by_term() -> None:
    log = make_log(1, 1, 2, 2, 5, 5, 5)
    assert log.find_conflict_by_term(7, 4) == 4  # skips the whole term-5 run
    assert log.find_conflict_by_term(7, 9) == 7
    assert log.find_conflict_by_term(3, 1) == 2
    assert log.find_conflict_by_term(7, 0) == 0


def test_maybe_append_truncates_only_the_conflicting_suffix() -> None:
    log = make_log(1, 1, 2, 2)
    log.unstable_from = 5  # everything durable
    last, first = log.maybe_append(2, 1, 0, tuple(entries(2, 3, start=3)))
    assert (last, first) == (4, 4)  # index 3 matched; index 4 rewritten
    assert [e.term for e in log.entries] == [1, 1, 2, 3]
    assert log.unstable_from == 4
    assert log.maybe_append(4, 9, 0, ()) == (-1, None)


def test_commit_and_compaction_invariants() -> None:
    log = make_log(1, 1, 2)
    log.commit_to(2)
    with pytest.raises(DivergenceError):
        log.append(entries(3, start=2))
    with pytest.raises(DivergenceError):
        log.commit_to(9)
    log.compact_to(2)
    assert (log.base, log.base_term, log.first_index, log.term(1)) == (2, 1, 3, None)
    assert log.slice(3, 4) == entries(2, start=3)


def test_slice_byte_limit_returns_at_least_one_entry() -> None:
    log = RaftLog()
    from microtrio.raft import Entry, EntryType

    log.append([Entry(1, i, EntryType.NORMAL, b"x" * 100) for i in range(1, 6)])
    assert len(log.slice(1, 6, max_bytes=10)) == 1
    assert len(log.slice(1, 6, max_bytes=250)) == 2
    assert len(log.slice(1, 6)) == 5


def test_progress_replicate_window() -> None:
    pr = Progress(next_index=11, max_inflight=2)
    pr.match = 10
    pr.become_replicate()
    pr.sent_entries(12)
    assert not pr.is_paused()
    pr.sent_entries(14)
    assert pr.is_paused() and pr.next == 15
    assert pr.maybe_update(12)
    assert not pr.is_paused() and list(pr.inflight) == [14]


def test_progress_probe_and_stale_rejections() -> None:
    pr = Progress(next_index=20, max_inflight=4)
    pr.sent_entries(19)
    assert pr.is_paused()  # one probe at a time
    assert not pr.maybe_decr_to(rejected=5, hint=3)  # not our probe: stale
    assert pr.maybe_decr_to(rejected=19, hint=7)
    assert pr.next == 8 and not pr.is_paused()
    pr.become_snapshot(30)
    assert pr.state is ProgressState.SNAPSHOT and pr.is_paused()
    pr.become_probe()
    assert pr.next == 31  # resumes after the snapshot
