"""Checksum-valid garbage in the log segment, snapshot and hard-state readers.

tests/replication/test_storage_corruption.py covers torn tails, flipped bits and random
damage, which the CRCs catch early. Here every field is random but the checksums are
recomputed, so decoding gets past them and meets absurd indexes, terms, types, lengths
and membership encodings. The readers must return a value or raise CorruptionError
naming the file; the whole store's load may raise only StateError (of which
CorruptionError is one).
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from microtrio import CorruptionError, StateError
from microtrio._replication._segments import encode_header, scan_segment, segment_name
from microtrio._replication._snapshots import read_hard_state, read_snapshot, snapshot_name
from microtrio._replication._storage import LogStore
from microtrio.raft import ConfState, Role, encode_conf_state

from ._fuzz import edits, fuzz_settings, mutate

u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 6)
_PREFIX = struct.Struct("<II")
_BODY = struct.Struct("<QQB")


def record(index: int, term: int, kind: int, data: bytes, length_delta: int = 0) -> bytes:
    """One log record with a correct checksum (``length_delta`` skews the length field)."""
    length = max(0, min(2**32 - 1, _BODY.size + len(data) + length_delta))
    length_field = struct.pack("<I", length)
    body = _BODY.pack(index, term, kind) + data
    return length_field + struct.pack("<I", zlib.crc32(body, zlib.crc32(length_field))) + body


records = st.lists(
    st.tuples(
        st.one_of(small, u64),
        st.one_of(small, u64),
        st.integers(0, 255) | st.integers(0, 3),
        st.binary(max_size=16),
        st.sampled_from([0, 0, 0, -1, 1, -17, 2**31]),
    ),
    max_size=5,
)


@fuzz_settings(300)
@given(st.one_of(small, u64), records, st.booleans(), st.one_of(small, u64))
def test_segment_with_valid_checksums(
    first: int, recs: list[tuple[int, int, int, bytes, int]], newest: bool, prev_term: int
) -> None:
    path = Path("/nonexistent") / segment_name(first)
    buf = encode_header(first) + b"".join(record(*r) for r in recs)
    try:
        scan = scan_segment(path, buf, name_index=first, newest=newest, prev_term=prev_term)
    except CorruptionError as exc:
        assert str(path) in str(exc)
        return
    indexes = [e.index for e in scan.entries]
    assert indexes == list(range(first, first + len(indexes)))
    terms = [e.term for e in scan.entries]
    assert terms == sorted(terms) and all(t >= prev_term for t in terms)
    assert scan.damage is None or newest


conf_bytes = st.one_of(
    st.dictionaries(st.integers(1, 2**64 - 1), st.sampled_from(list(Role)), max_size=4).map(
        lambda d: encode_conf_state(ConfState.from_dict(d))
    ),
    st.binary(max_size=40),
    st.builds(
        lambda n, body: b"\x01" + struct.pack(">I", n) + body,
        st.integers(0, 2**32 - 1),
        st.binary(max_size=30),
    ),
)
_SNAP_HEADER = struct.Struct("<4sHHQQIQ")


def snapshot_file(index: int, term: int, conf: bytes, data: bytes, skew: tuple[int, int]) -> bytes:
    conf_len = max(0, min(2**32 - 1, len(conf) + skew[0]))
    data_len = max(0, min(2**64 - 1, len(data) + skew[1]))
    head = _SNAP_HEADER.pack(b"MTSN", 1, 0, index, term, conf_len, data_len)
    crc = struct.pack("<I", zlib.crc32(data, zlib.crc32(conf)))
    return head + struct.pack("<I", zlib.crc32(head)) + conf + data + crc


skews = st.tuples(st.sampled_from([0, 0, -1, 1, 2**32]), st.sampled_from([0, 0, -1, 1, 2**63]))


@fuzz_settings(200)
@given(small, small, conf_bytes, st.binary(max_size=32), skews, edits | st.just([]))
@example(0, 0, b"\x01\x00\x00\x00\x00\x00", b"", (-1, 1), [])
def test_snapshot_with_valid_checksums(
    index: int,
    term: int,
    conf: bytes,
    data: bytes,
    skew: tuple[int, int],
    changes: list[tuple[int, int, int]],
) -> None:
    raw = snapshot_file(index, term, conf, data, skew)
    raw = mutate(raw, changes) if changes else raw
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / snapshot_name(term, index)
        path.write_bytes(raw)
        try:
            snap = read_snapshot(path)
        except CorruptionError as exc:
            assert str(path) in str(exc)
            return
        assert (snap.meta.index, snap.meta.term) == (index, term)
        # Accepted: the file is whole and its checksums hold, so the reader returns what its
        # own header says. A skewed split of the same bytes can be valid too (conf and data
        # share one checksum): conf b"\x01\0\0\0\0\0" + data b"" read as a 5-byte
        # configuration and data b"\0" is such a file, found by this test.
        *_, conf_len, data_len = _SNAP_HEADER.unpack_from(raw)
        start = _SNAP_HEADER.size + 4 + conf_len
        assert len(raw) == start + data_len + 4
        assert snap.data == raw[start : start + data_len]
        if skew == (0, 0) and not changes:
            assert snap.data == data


@fuzz_settings(100)
@given(
    st.binary(max_size=60)
    | st.builds(lambda b: b"MTHS\x01\x00\x00\x00" + b, st.binary(max_size=40))
)
def test_hard_state_garbage(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hardstate"
        if len(raw) >= 4:  # half of the cases get a correct checksum
            raw = raw + struct.pack("<I", zlib.crc32(raw))
        path.write_bytes(raw)
        try:
            hs = read_hard_state(Path(tmp))
        except CorruptionError as exc:
            assert str(path) in str(exc)
            return
        assert hs.term >= 0


def test_store_directory_with_wrong_file_kinds_is_a_state_error(tmp_path: Path) -> None:
    """A segment, snapshot or hard state that is a directory is a StateError, not OSError."""
    for name in (segment_name(1), snapshot_name(1, 1), "hardstate"):
        store_dir = tmp_path / name.replace(".", "_")
        store_dir.mkdir()
        (store_dir / name).mkdir()
        with LogStore(store_dir) as store:
            try:
                store.load()
            except StateError as exc:
                assert str(store_dir) in str(exc)
            else:
                raise AssertionError(f"a directory named {name} loaded")


@fuzz_settings(60)
@given(records, conf_bytes, st.booleans())
def test_whole_store_load(
    recs: list[tuple[int, int, int, bytes, int]], conf: bytes, with_snapshot: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        first = recs[0][0] if recs and recs[0][0] < 8 else 1
        (directory / segment_name(first)).write_bytes(
            encode_header(first) + b"".join(record(*r) for r in recs)
        )
        if with_snapshot:
            (directory / snapshot_name(1, 2)).write_bytes(snapshot_file(2, 1, conf, b"db", (0, 0)))
        with LogStore(directory) as store:
            try:
                state = store.load()
            except StateError:
                return
        assert all(e.index > 0 for e in state.entries)
        assert os.path.isdir(directory)


def test_damaged_tail_of_a_segment_near_the_largest_index_is_handled() -> None:
    """Regression: the search for a valid record after damage packed ``index >> 16 << 16``
    past 2**64 and raised struct.error for a segment starting near the largest u64."""
    for first in (2**64 - 2, 2**64 - 1):
        path = Path("/nonexistent") / segment_name(first)
        bad = record(first, 0, 0, b"", -1)
        for body in (bad + record(first, 0, 0, b""), record(first, 1, 0, b"x") + bad * 2):
            try:
                scan = scan_segment(
                    path, encode_header(first) + body, name_index=first, newest=True, prev_term=0
                )
            except CorruptionError as exc:
                assert str(path) in str(exc)
            else:
                assert scan.damage is not None
