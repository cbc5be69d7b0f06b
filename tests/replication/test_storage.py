"""Durable Raft storage: round trips, restarts, truncation, compaction, snapshots, hard state."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import trio

from microtrio import CorruptionError, StateError
from microtrio._replication import _durable as durable
from microtrio._replication import _snapshots as snapshots
from microtrio._replication._segments import MAX_ENTRY_DATA
from microtrio._replication._storage import LogStore, open_log_store
from microtrio.raft import ConfState, Entry, EntryType, HardState, Role, Snapshot, SnapshotMeta

SMALL = 256  # segment size that makes a new segment every few entries


def entries(start: int, count: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [
        Entry(
            term=term, index=i, type=EntryType.NORMAL, data=f"{i}:{term}".encode().ljust(size, b".")
        )
        for i in range(start, start + count)
    ]


def snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    conf = ConfState.from_dict({1: Role.VOTER, 2: Role.STANDBY, 7: Role.SPARE})
    return Snapshot(SnapshotMeta(index=index, term=term, conf=conf), data)


def opened(directory: Path, segment_size: int = SMALL) -> LogStore:
    store = LogStore(directory, segment_size=segment_size)
    store.load()
    return store


def reload(directory: Path, segment_size: int = SMALL) -> tuple[LogStore, list[Entry], HardState]:
    store = LogStore(directory, segment_size=segment_size)
    state = store.load()
    return store, list(state.entries), state.hard_state


def segment_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".seg"))


def test_fresh_directory_loads_empty(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "raft")
    state = store.load()
    assert state.hard_state == HardState(0, 0, 0)
    assert state.snapshot is None
    assert state.entries == ()
    assert store.statistics().last_index == 0
    store.close()


def test_round_trip_across_restart_and_segments(tmp_path: Path) -> None:
    written = entries(1, 5) + entries(6, 30, term=2, size=40)
    with opened(tmp_path) as store:
        store.append(written[:5])
        for start in range(5, 35, 3):
            store.append(written[start : start + 3])
        store.save_hard_state(HardState(term=2, vote=3, commit=17))
    assert len(segment_files(tmp_path)) > 2
    store, loaded, hs = reload(tmp_path)
    assert loaded == written
    assert hs == HardState(term=2, vote=3, commit=17)
    store.append(entries(36, 2, term=2))
    store.close()
    _, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == list(range(1, 38))


def test_empty_data_and_all_entry_types_round_trip(tmp_path: Path) -> None:
    written = [
        Entry(1, 1, EntryType.NOOP, b""),
        Entry(1, 2, EntryType.CONF_CHANGE, b"\x01conf"),
        Entry(3, 3, EntryType.NORMAL, bytes(range(256)) * 3),
    ]
    with opened(tmp_path, segment_size=1 << 20) as store:
        store.append(written)
    _, loaded, _ = reload(tmp_path)
    assert loaded == written
    assert isinstance(loaded[0].type, EntryType)


def test_append_is_one_group_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = durable.sync_data

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr("microtrio._replication._logstore.sync_data", counting)
    with opened(tmp_path, segment_size=1 << 20) as store:
        store.append(entries(1, 1))
        calls.clear()
        store.append(entries(2, 256))
        assert len(calls) == 1


def test_append_after_truncate(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 30))
        store.save_hard_state(HardState(term=1, vote=1, commit=4))
        store.truncate_from(10)
        assert store.statistics().last_index == 9
        store.append(entries(10, 5, term=2))
        # An append that overlaps the log replaces the conflicting suffix.
        store.append(entries(12, 4, term=3))
    _, loaded, _ = reload(tmp_path)
    assert [(e.index, e.term) for e in loaded] == (
        [(i, 1) for i in range(1, 10)] + [(10, 2), (11, 2)] + [(i, 3) for i in range(12, 16)]
    )


def test_truncate_at_a_segment_start_removes_that_segment(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        for start in range(1, 40, 3):
            store.append(entries(start, 3))
        names = segment_files(tmp_path)
        second_first = int(names[1][4:24])
        store.truncate_from(second_first)
        assert segment_files(tmp_path) == names[:1]
        store.append(entries(second_first, 2, term=5))
    _, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == list(range(1, second_first + 2))
    assert loaded[-1].term == 5


def test_truncate_and_append_refuse_bad_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 10))
        store.save_hard_state(HardState(1, 1, 5))
        with pytest.raises(ValueError, match="committed"):
            store.truncate_from(5)
        with pytest.raises(ValueError, match="committed"):
            store.append(entries(3, 2, term=2))
        with pytest.raises(ValueError, match="gap"):
            store.append(entries(12, 1))
        with pytest.raises(ValueError, match="contiguous"):
            store.append(entries(11, 1) + entries(13, 1))
        with pytest.raises(ValueError, match="lower term"):
            store.append(entries(11, 1, term=0))
        with pytest.raises(ValueError, match="beyond"):
            store.save_hard_state(HardState(1, 1, 11))
        assert MAX_ENTRY_DATA >= 1 << 29
        with monkeypatch.context() as patch:
            patch.setattr("microtrio._replication._segments.MAX_ENTRY_DATA", 100)
            with pytest.raises(ValueError, match="101 bytes, over 100"):
                store.append([Entry(1, 11, EntryType.NORMAL, bytes(101))])
        assert store.statistics().last_index == 10


def test_compaction_keeps_later_entries(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        for start in range(1, 61, 4):
            store.append(entries(start, 4))
        before = segment_files(tmp_path)
        with pytest.raises(ValueError, match="snapshot"):
            store.compact_to(30)
        store.save_snapshot(snapshot(30, 1))
        store.compact_to(30)
        after = segment_files(tmp_path)
        assert len(after) < len(before)
        assert int(after[0][4:24]) <= 31
        store.append(entries(61, 1))
    _, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == list(range(31, 62))


def test_compaction_never_removes_the_newest_segment(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 3))
        store.save_snapshot(snapshot(3, 1))
        store.compact_to(3)
        store.append(entries(4, 1))
    store, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == [4]
    store.close()


def test_snapshot_round_trip_and_replacement(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 20))
        first = snapshot(5, 1, b"old")
        store.save_snapshot(first)
        assert store.load_snapshot() == first
        second = snapshot(12, 1, os.urandom(5000))
        store.save_snapshot(second)
        with pytest.raises(ValueError, match="older"):
            store.save_snapshot(first)
    snaps = sorted(n for n in os.listdir(tmp_path) if n.startswith("snapshot-"))
    assert snaps == ["snapshot-1-12.snap"]
    store = LogStore(tmp_path, segment_size=SMALL)
    state = store.load()
    assert state.snapshot == second
    assert [e.index for e in state.entries] == list(range(13, 21))
    store.close()


def test_install_snapshot_keeps_a_matching_suffix(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 20, term=2))
        store.install_snapshot(snapshot(10, 2))
    _, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == list(range(11, 21))


def test_install_snapshot_drops_a_log_that_does_not_match(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 20, term=1))
        store.persist(HardState(3, 2, 40), [], snapshot(40, 3))
        assert segment_files(tmp_path) == []
        store.append(entries(41, 2, term=3))
    store, loaded, hs = reload(tmp_path)
    assert [e.index for e in loaded] == [41, 42]
    assert hs.commit == 40
    store.close()


def test_interrupted_install_is_finished_on_load(tmp_path: Path) -> None:
    # The snapshot became durable but the crash came before the log was dropped.
    with opened(tmp_path) as store:
        store.append(entries(1, 10, term=1))
        store.save_snapshot(snapshot(50, 4))
    store, loaded, _ = reload(tmp_path)
    assert loaded == []
    assert segment_files(tmp_path) == []
    store.append(entries(51, 1, term=4))
    store.close()
    _, loaded, _ = reload(tmp_path)
    assert [e.index for e in loaded] == [51]


def test_persist_writes_entries_then_hard_state_only_when_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hard-state file is replaced only for a new term or vote; a commit-only change
    goes to the unsynced commit hint (and still reloads)."""
    saved: list[HardState] = []
    real = snapshots.write_hard_state

    def recording(directory: Path, hard_state: HardState) -> None:
        saved.append(hard_state)
        real(directory, hard_state)

    monkeypatch.setattr("microtrio._replication._logstore.write_hard_state", recording)
    with opened(tmp_path) as store:
        store.persist(HardState(1, 1, 0), entries(1, 3), None)
        store.persist(HardState(1, 1, 0), entries(4, 1), None)
        store.persist(HardState(1, 1, 4), [], None)
        store.persist(None, entries(5, 1), None)
    assert saved == [HardState(1, 1, 0)]
    _, loaded, hs = reload(tmp_path)
    assert hs == HardState(1, 1, 4)
    assert len(loaded) == 5


def test_hard_state_tmp_leftovers_are_ignored(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 3))
        store.save_hard_state(HardState(4, 2, 3))
    (tmp_path / "hardstate.tmp").write_bytes(b"half-written garbage")
    (tmp_path / "snapshot-9-99.snap.tmp").write_bytes(b"MTSN")
    (tmp_path / "log-00000000000000000004.seg.tmp").write_bytes(b"MTLG")
    store, loaded, hs = reload(tmp_path)
    assert hs == HardState(4, 2, 3)
    assert len(loaded) == 3
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    store.append(entries(4, 1))
    store.close()


def test_hard_state_replacement_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 3))
        store.save_hard_state(HardState(1, 1, 1))

        def crash(src: object, dst: object) -> None:
            raise OSError(5, "simulated crash before rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(StateError, match="save hard state"):
            store.save_hard_state(HardState(2, 2, 2))
        monkeypatch.undo()
        # A failed write makes the store refuse to carry on.
        with pytest.raises(StateError, match="unusable"):
            store.append(entries(4, 1))
    _, _, hs = reload(tmp_path)
    assert hs == HardState(1, 1, 1)


def test_failed_fsync_is_a_state_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with opened(tmp_path, segment_size=1 << 20) as store:
        store.append(entries(1, 1))

        def fail(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr("microtrio._replication._logstore.sync_data", fail)
        with pytest.raises(StateError, match="append failed") as info:
            store.append(entries(2, 1))
        assert isinstance(info.value.__cause__, OSError)


def test_directory_is_locked_while_open(tmp_path: Path) -> None:
    with opened(tmp_path):
        with pytest.raises(StateError, match="already open"):
            LogStore(tmp_path).load()
    with LogStore(tmp_path) as again:
        again.load()


def test_commit_beyond_the_log_is_corruption(tmp_path: Path) -> None:
    with opened(tmp_path) as store:
        store.append(entries(1, 5))
        store.save_hard_state(HardState(1, 1, 5))
    for name in segment_files(tmp_path):
        (tmp_path / name).unlink()
    with pytest.raises(CorruptionError, match="commit index 5"):
        LogStore(tmp_path).load()


def test_log_warnings_name_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with opened(tmp_path, segment_size=1 << 20) as store:
        store.append(entries(1, 3))
    path = tmp_path / segment_files(tmp_path)[-1]
    with path.open("ab") as f:
        f.write(b"\x07\x00")
    with caplog.at_level(logging.WARNING, logger="microtrio.replication.storage"):
        with LogStore(tmp_path, name="member-a") as store:
            store.load()
    assert any(
        r.getMessage().startswith(f"member-a: {path}: offset") and "torn tail" in r.getMessage()
        for r in caplog.records
    )


async def test_async_facade_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_log_store(tmp_path, segment_size=SMALL) as store:
            state = await store.load()
            assert state.entries == ()
            await store.persist(HardState(1, 1, 0), entries(1, 10), None)

            async def writer(start: int) -> None:
                await store.append(entries(start, 5))

            # Calls are serialised through one limiter: both land, in order.
            await writer(11)
            await writer(16)
            await store.persist(HardState(2, 1, 15), [], snapshot(12, 1))
            await store.compact_to(12)
            await store.truncate_from(19)
            assert (await store.load_snapshot()) == snapshot(12, 1)
            assert store.statistics().last_index == 18
        async with open_log_store(tmp_path, segment_size=SMALL) as store:
            state = await store.load()
            assert state.hard_state == HardState(2, 1, 15)
            assert state.snapshot == snapshot(12, 1)
            assert [e.index for e in state.entries] == list(range(13, 19))


async def test_async_calls_run_off_the_event_loop_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    active = [0, 0]  # now, most at once
    real = LogStore.append

    def append(self: LogStore, batch: list[Entry]) -> None:
        threads.add(threading.get_ident())
        active[0] += 1
        active[1] = max(active)
        try:
            real(self, batch)
        finally:
            active[0] -= 1

    monkeypatch.setattr(LogStore, "append", append)
    with trio.fail_after(20):
        async with open_log_store(tmp_path) as store:
            await store.load()
            async with trio.open_nursery() as nursery:
                for start in range(1, 41, 4):
                    # Whole-log rewrites from index 1 may run in any order: each is valid.
                    nursery.start_soon(store.append, entries(1, start, term=1))
            assert store.statistics().last_index >= 1
    assert threading.get_ident() not in threads
    assert active[1] == 1
