"""Durable storage under damage: torn tails are cut, everything else is a CorruptionError."""

from __future__ import annotations

import os
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtrio import CorruptionError
from microtrio._replication._segments import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    encode_header,
    encode_records,
    scan_segment,
    segment_name,
)
from microtrio._replication._snapshots import read_hard_state, read_snapshot, write_snapshot
from microtrio._replication._storage import LogStore
from microtrio.raft import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

DATA = 10
RECORD = RECORD_OVERHEAD + DATA


def entries(start: int, count: int, term: int = 1) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, f"{i}:{term}".encode().ljust(DATA, b"."))
        for i in range(start, start + count)
    ]


def build(directory: Path, count: int = 5, commit: int = 3, segment_size: int = 1 << 20) -> Path:
    """A store with entries 1..count (term 1), one batch each; returns the newest segment."""
    with LogStore(directory, segment_size=segment_size) as store:
        store.load()
        for e in entries(1, count):
            store.append([e])
        store.save_hard_state(HardState(1, 1, commit))
    return directory / sorted(n for n in os.listdir(directory) if n.endswith(".seg"))[-1]


def load(directory: Path) -> list[int]:
    with LogStore(directory, segment_size=1 << 20) as store:
        return [e.index for e in store.load().entries]


def flip(buf: bytes, offset: int) -> bytes:
    return buf[:offset] + bytes([buf[offset] ^ (1 << (offset % 8))]) + buf[offset + 1 :]


def assert_corrupt(directory: Path, path: Path, match: str | None = None) -> CorruptionError:
    with pytest.raises(CorruptionError, match=match) as info:
        LogStore(directory).load()
    assert str(path) in str(info.value)
    assert "offset" in str(info.value)
    return info.value


def test_torn_tail_at_every_byte_offset_loads_the_prefix(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=3)
    original = seg.read_bytes()
    last_start = len(original) - RECORD
    for cut in range(last_start, len(original)):
        seg.write_bytes(original[:cut])
        assert load(tmp_path) == [1, 2, 3, 4], cut
        assert seg.stat().st_size == last_start
    # The store carries on after the cut: a new entry 5 lands where the torn one was.
    with LogStore(tmp_path) as store:
        store.load()
        store.append(entries(5, 1, term=2))
    assert load(tmp_path) == [1, 2, 3, 4, 5]


def test_torn_tail_over_several_uncommitted_records(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=3)
    original = seg.read_bytes()
    seg.write_bytes(original[: len(original) - RECORD - 7])
    assert load(tmp_path) == [1, 2, 3]


def test_torn_tail_reaching_a_committed_entry_is_corruption(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=5)
    original = seg.read_bytes()
    for cut in (len(original) - 1, len(original) - RECORD + 3):
        seg.write_bytes(original[:cut])
        assert_corrupt(tmp_path, seg, "commit index 5")


def test_flipped_bit_in_the_committed_prefix_is_corruption(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=3)
    original = seg.read_bytes()
    for offset in range(HEADER_SIZE + 3 * RECORD):
        seg.write_bytes(flip(original, offset))
        assert_corrupt(tmp_path, seg)
    seg.write_bytes(original)
    assert load(tmp_path) == [1, 2, 3, 4, 5]


def test_flipped_bit_in_the_last_uncommitted_record_is_truncated(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=3)
    original = seg.read_bytes()
    for offset in range(len(original) - RECORD, len(original)):
        seg.write_bytes(flip(original, offset))
        assert load(tmp_path) == [1, 2, 3, 4], offset


def test_damaged_record_followed_by_valid_ones_is_corruption(tmp_path: Path) -> None:
    seg = build(tmp_path, count=5, commit=0)
    original = seg.read_bytes()
    for offset in (HEADER_SIZE + 3 * RECORD, HEADER_SIZE + 3 * RECORD + RECORD_OVERHEAD + 2):
        seg.write_bytes(flip(original, offset))
        error = assert_corrupt(tmp_path, seg, "valid record follows")
        assert f"offset {HEADER_SIZE + 3 * RECORD}" in str(error)


def test_damage_in_a_segment_that_is_not_the_newest_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, count=20, commit=0, segment_size=100)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))
    assert len(names) > 2
    first = tmp_path / names[0]
    original = first.read_bytes()
    first.write_bytes(original[:-1])
    assert_corrupt(tmp_path, first, "non-final segment")
    first.write_bytes(flip(original, len(original) - 1))
    assert_corrupt(tmp_path, first, "non-final segment")


def test_missing_segment_is_a_gap(tmp_path: Path) -> None:
    build(tmp_path, count=20, commit=0, segment_size=100)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))
    (tmp_path / names[1]).unlink()
    assert_corrupt(tmp_path, tmp_path / names[2], "gap in the log")


def test_first_segment_not_starting_at_one_is_a_gap(tmp_path: Path) -> None:
    build(tmp_path, count=20, commit=0, segment_size=100)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".seg"))
    (tmp_path / names[0]).unlink()
    assert_corrupt(tmp_path, tmp_path / names[1], "gap in the log")


def write_segment(directory: Path, first: int, records: list[Entry]) -> Path:
    path = directory / segment_name(first)
    path.write_bytes(encode_header(first) + encode_records(records)[0])
    return path


def test_index_gap_inside_a_segment_with_valid_checksums(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 1, entries(1, 2) + entries(4, 2))
    assert_corrupt(tmp_path, path, "expected entry 3, found 4")


def test_term_going_backwards_is_corruption(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 1, entries(1, 2, term=3) + entries(3, 1, term=2))
    assert_corrupt(tmp_path, path, "term 2 below the previous 3")


@pytest.mark.parametrize("damaged", [65533, 65535, 65536])
def test_valid_records_after_damage_are_found_across_index_boundaries(
    tmp_path: Path, damaged: int
) -> None:
    first = 65530
    path = write_segment(tmp_path, first, entries(first, 10))
    offset = HEADER_SIZE + (damaged - first) * RECORD + RECORD_OVERHEAD
    path.write_bytes(flip(path.read_bytes(), offset))
    view = path.read_bytes()
    with pytest.raises(CorruptionError, match="valid record follows"):
        scan_segment(path, view, name_index=first, newest=True, prev_term=0)
    # The same damage in the last record is a torn tail.
    path = write_segment(tmp_path, first, entries(first, damaged - first + 1))
    offset = HEADER_SIZE + (damaged - first) * RECORD + RECORD_OVERHEAD
    scan = scan_segment(
        path, flip(path.read_bytes(), offset), name_index=first, newest=True, prev_term=0
    )
    assert scan.damage == "record checksum mismatch"
    assert [e.index for e in scan.entries] == list(range(first, damaged))


def test_torn_tail_of_a_large_entry_is_cut_quickly(tmp_path: Path) -> None:
    with LogStore(tmp_path) as store:
        store.load()
        store.append(entries(1, 1))
        store.append([Entry(1, 2, EntryType.NORMAL, os.urandom(4 << 20))])
    seg = tmp_path / segment_name(1)
    seg.write_bytes(seg.read_bytes()[:-1])
    started = time.perf_counter()
    assert load(tmp_path) == [1]
    # The resync scan runs in C: a Python loop over every offset took ~5 s here.
    assert time.perf_counter() - started < 3


def test_superseded_snapshot_left_by_a_crash_is_removed_on_load(tmp_path: Path) -> None:
    build(tmp_path, count=6, commit=2)
    conf = ConfState.of_voters([1])
    with LogStore(tmp_path) as store:
        store.load()
        store.save_snapshot(Snapshot(SnapshotMeta(4, 1, conf), b"new"))
    write_snapshot(tmp_path, Snapshot(SnapshotMeta(2, 1, conf), b"old"))
    with LogStore(tmp_path) as store:
        state = store.load()
    assert state.snapshot is not None and state.snapshot.data == b"new"
    assert [e.index for e in state.entries] == [5, 6]
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".snap")) == ["snapshot-1-4.snap"]


def test_unknown_entry_type_is_corruption(tmp_path: Path) -> None:
    data, _ = encode_records(entries(1, 1))
    body = bytearray(data)
    body[8 + 16] = 200  # the type byte, then fix the crc so only the type is wrong
    struct.pack_into("<I", body, 4, zlib.crc32(bytes(body[8:]), zlib.crc32(bytes(body[:4]))))
    path = tmp_path / segment_name(1)
    path.write_bytes(encode_header(1) + bytes(body))
    assert_corrupt(tmp_path, path, "unknown type 200")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + struct.pack("<H", 9) + b[6:], "version 9"),
        (lambda b: flip(b, 12), "header checksum"),
        (lambda b: b[:10], "truncated segment header"),
    ],
)
def test_bad_segment_header_is_corruption(tmp_path: Path, mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    seg = build(tmp_path, count=2, commit=0)
    seg.write_bytes(mangle(seg.read_bytes()))
    assert_corrupt(tmp_path, seg, message)


def test_segment_header_disagreeing_with_its_name_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, count=2, commit=0)
    path = tmp_path / segment_name(3)
    path.write_bytes(encode_header(5) + encode_records(entries(5, 1))[0])
    assert_corrupt(tmp_path, path, "does not match the file name")


def test_damaged_hard_state_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, count=2, commit=1)
    path = tmp_path / "hardstate"
    original = path.read_bytes()
    for offset in range(len(original)):
        path.write_bytes(flip(original, offset))
        assert_corrupt(tmp_path, path)
    path.write_bytes(original[:-1])
    assert_corrupt(tmp_path, path, "bytes")


def test_damaged_snapshot_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, count=4, commit=2)
    snap = Snapshot(SnapshotMeta(3, 1, ConfState.of_voters([1, 2, 3])), b"db-image")
    with LogStore(tmp_path) as store:
        store.load()
        store.save_snapshot(snap)
    path = tmp_path / "snapshot-1-3.snap"
    original = path.read_bytes()
    for offset in range(len(original)):
        path.write_bytes(flip(original, offset))
        assert_corrupt(tmp_path, path)
    path.write_bytes(original)
    path.rename(tmp_path / "snapshot-2-3.snap")
    assert_corrupt(tmp_path, tmp_path / "snapshot-2-3.snap", "does not match the name")


# -- hardened decoding: garbage never raises anything but CorruptionError -------------------

GARBAGE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GARBAGE
@given(st.binary(max_size=300), st.booleans())
def test_garbage_segment_bodies(body: bytes, newest: bool) -> None:
    path = Path("/nonexistent") / segment_name(1)
    try:
        scan = scan_segment(path, encode_header(1) + body, name_index=1, newest=newest, prev_term=0)
    except CorruptionError as exc:
        assert str(path) in str(exc)
    else:
        assert scan.end <= len(body) + HEADER_SIZE


@GARBAGE
@given(st.binary(max_size=200))
def test_garbage_whole_files(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        for name, reader in (
            ("snapshot-1-1.snap", lambda p: read_snapshot(p)),
            ("hardstate", lambda p: read_hard_state(p.parent)),
        ):
            path = directory / name
            path.write_bytes(blob)
            with pytest.raises(CorruptionError):
                reader(path)
        path = directory / segment_name(1)
        try:
            scan_segment(path, blob, name_index=1, newest=True, prev_term=0)
        except CorruptionError:
            pass


@GARBAGE
@given(
    st.lists(
        st.tuples(st.integers(0, 5 * RECORD + HEADER_SIZE - 1), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_random_damage_never_yields_wrong_entries(damage: list[tuple[int, int]]) -> None:
    """Whatever bytes are damaged, a load returns a prefix of the real log or raises."""
    good = entries(1, 5)
    image = bytearray(encode_header(1) + encode_records(good)[0])
    for offset, xor in damage:
        image[offset] ^= xor
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        (directory / segment_name(1)).write_bytes(bytes(image))
        try:
            with LogStore(directory) as store:
                loaded = list(store.load().entries)
        except CorruptionError:
            return
        assert loaded == good[: len(loaded)]
