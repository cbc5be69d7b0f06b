"""The commit hint: a commit-only hard-state change costs no sync, and any damage to the
(unsynced) hint falls back to the hard-state file's commit, a safe lower bound."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from microtrio import CorruptionError
from microtrio._replication import _durable as durable
from microtrio._replication._storage import LogStore
from microtrio.raft import Entry, EntryType, HardState


def entries(start: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"x%d" % i) for i in range(start, start + count)]


def load(directory: Path) -> tuple[HardState, int]:
    with LogStore(directory) as store:
        state = store.load()
    return state.hard_state, len(state.entries)


@contextmanager
def counting_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    real_fsync, real_datasync = os.fsync, durable._datasync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def datasync(fd: int) -> None:
        calls.append("fdatasync")
        real_datasync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        patch.setattr(durable, "_datasync", datasync)
        yield calls


def test_a_commit_only_change_costs_no_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LogStore(tmp_path) as store:
        store.load()
        store.persist(HardState(1, 1, 0), entries(1, 3), None)
        with counting_syncs(monkeypatch) as calls:
            store.persist(HardState(1, 1, 2), entries(4, 2), None)  # entries + commit
            assert calls == ["fdatasync"]
            store.persist(HardState(1, 1, 5), [], None)  # commit alone
            assert calls == ["fdatasync"]
            store.persist(HardState(2, 0, 5), [], None)  # a new term: the file, synced
            assert len(calls) > 1
        assert store.statistics().hard_state == HardState(2, 0, 5)
    assert load(tmp_path) == (HardState(2, 0, 5), 5)


def test_the_latest_commit_survives_a_process_crash(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.load()
    store.persist(HardState(3, 2, 0), entries(1, 6), None)
    for commit in range(1, 7):
        store.persist(HardState(3, 2, commit), [], None)
    # no close: the process dies with its descriptors; written bytes stay
    assert (tmp_path / durable.COMMIT_HINT_NAME).read_bytes() == durable.encode_commit_hint(6)
    store.close()
    assert load(tmp_path) == (HardState(3, 2, 6), 6)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.unlink(), id="missing"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:7]), id="torn"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"\xff" * durable.HINT_SIZE), id="garbage"),
        pytest.param(
            lambda p: p.write_bytes(durable.encode_commit_hint(1) + b"junk"), id="too-long"
        ),
    ],
)
def test_a_damaged_hint_falls_back_to_the_hard_state_file(tmp_path: Path, damage: object) -> None:
    with LogStore(tmp_path) as store:
        store.load()
        store.persist(HardState(1, 1, 2), entries(1, 5), None)  # the file says commit 2
        store.persist(HardState(1, 1, 4), [], None)  # the hint says 4
    assert load(tmp_path) == (HardState(1, 1, 4), 5)
    assert callable(damage)
    damage(tmp_path / durable.COMMIT_HINT_NAME)
    assert load(tmp_path) == (HardState(1, 1, 2), 5)
    # and the store carries on writing the hint
    with LogStore(tmp_path) as store:
        store.load()
        store.persist(HardState(1, 1, 5), [], None)
    assert load(tmp_path) == (HardState(1, 1, 5), 5)


def test_an_older_hint_never_lowers_the_file_commit(tmp_path: Path) -> None:
    with LogStore(tmp_path) as store:
        store.load()
        store.persist(HardState(1, 1, 0), entries(1, 8), None)
        store.persist(HardState(1, 1, 3), [], None)  # hint: 3
        store.persist(HardState(2, 2, 7), [], None)  # file: term 2, commit 7
    assert load(tmp_path) == (HardState(2, 2, 7), 8)


def test_the_torn_tail_rule_uses_the_hinted_commit(tmp_path: Path) -> None:
    """A damaged record at or below the hinted commit is corruption, not a torn tail."""
    with LogStore(tmp_path) as store:
        store.load()
        store.persist(HardState(1, 1, 0), entries(1, 4), None)
        store.persist(HardState(1, 1, 4), [], None)
    segment = next(p for p in tmp_path.iterdir() if p.suffix == ".seg")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # damage entry 4, committed per the hint only
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="commit index 4"):
        load(tmp_path)
    # without the hint, the same damage is an unacknowledged torn tail, cut off
    (tmp_path / durable.COMMIT_HINT_NAME).unlink()
    assert load(tmp_path) == (HardState(1, 1, 0), 3)
