"""Preallocated log segments: the newest segment is zero-filled up to ``segment_size`` and
appended to in place. Padding is the clean end of the data, garbage before the padding is a
torn tail (cut and zeroed again), dropped entries never come back, and segments written
before preallocation (ending at their last record) still load and take appends."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microtrio import CorruptionError
from microtrio._replication import _durable as durable
from microtrio._replication._segments import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    encode_header,
    encode_records,
    scan_segment,
    segment_name,
)
from microtrio._replication._storage import LogStore
from microtrio.raft import Entry, EntryType, HardState

SEGMENT = 4096
DATA = 10
RECORD = RECORD_OVERHEAD + DATA


def entries(start: int, count: int, term: int = 1) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, f"{i}:{term}".encode().ljust(DATA, b"."))
        for i in range(start, start + count)
    ]


def load(directory: Path, segment_size: int = SEGMENT) -> list[tuple[int, int]]:
    with LogStore(directory, segment_size=segment_size) as store:
        return [(e.index, e.term) for e in store.load().entries]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("log-*.seg"))


def image(batches: list[list[Entry]]) -> bytes:
    """What a segment holding ``batches`` (first index 1) has before its padding."""
    return encode_header(1) + b"".join(encode_records(b)[0] for b in batches)


def write_store(directory: Path, batches: list[list[Entry]], commit: int = 0) -> None:
    with LogStore(directory, segment_size=SEGMENT) as store:
        store.load()
        for batch in batches:
            store.append(batch)
        store.save_hard_state(HardState(1, 1, commit))


def test_appends_fill_the_preallocated_segment_in_place(tmp_path: Path) -> None:
    batches = [entries(1, 1), entries(2, 3), entries(5, 2)]
    with LogStore(tmp_path, segment_size=SEGMENT) as store:
        store.load()
        for k, batch in enumerate(batches):
            store.append(batch)
            (seg,) = segments(tmp_path)
            assert seg.stat().st_size == SEGMENT  # the file never grows per append
            assert seg.read_bytes() == image(batches[: k + 1]).ljust(SEGMENT, b"\x00")
    assert load(tmp_path) == [(i, 1) for i in range(1, 7)]


def test_append_after_reload_continues_at_the_end_of_the_data(tmp_path: Path) -> None:
    write_store(tmp_path, [entries(1, 3)])
    for start in (4, 5, 7):  # each in a fresh store, after a reload
        with LogStore(tmp_path, segment_size=SEGMENT) as store:
            store.load()
            store.append(entries(start, 1 if start < 5 else 2))
    expected = [entries(1, 3), entries(4, 1), entries(5, 2), entries(7, 2)]
    (seg,) = segments(tmp_path)
    assert seg.read_bytes() == image(expected).ljust(SEGMENT, b"\x00")
    assert load(tmp_path) == [(i, 1) for i in range(1, 9)]


@pytest.mark.parametrize("gap", [0, 1, 700])
def test_garbage_then_zeros_is_a_torn_tail_cut_and_zeroed(
    tmp_path: Path, gap: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn write into the padding: whatever landed (here after ``gap`` zero bytes that
    did not) is cut with a warning, the bytes are zero again on disk, and appends go on."""
    write_store(tmp_path, [entries(1, 3), entries(4, 2)], commit=3)
    (seg,) = segments(tmp_path)
    data = image([entries(1, 3), entries(4, 2)])
    torn = encode_records(entries(6, 1))[0][: RECORD - 3]  # the part of entry 6 that landed
    with seg.open("r+b") as f:
        f.seek(len(data) + gap)
        f.write(torn)
    with caplog.at_level(logging.WARNING, "microtrio.replication.storage"):
        assert load(tmp_path) == [(i, 1) for i in range(1, 6)]
    assert "torn tail" in caplog.text and "entries from 6" in caplog.text
    assert seg.read_bytes() == data.ljust(SEGMENT, b"\x00")
    caplog.clear()
    with LogStore(tmp_path, segment_size=SEGMENT) as store:
        store.load()
        store.append(entries(6, 1, term=2))
    with caplog.at_level(logging.WARNING, "microtrio.replication.storage"):
        assert load(tmp_path) == [(i, 1) for i in range(1, 6)] + [(6, 2)]
    assert caplog.text == ""


def test_garbage_in_the_padding_reaching_a_committed_entry_is_corruption(tmp_path: Path) -> None:
    write_store(tmp_path, [entries(1, 3)], commit=3)
    (seg,) = segments(tmp_path)
    data = image([entries(1, 3)])
    seg.write_bytes(data[:-1] + b"\xff" + bytes(SEGMENT - len(data)))  # entry 3 damaged
    with pytest.raises(CorruptionError, match="commit index 3") as info:
        load(tmp_path)
    assert str(seg) in str(info.value)


def test_a_valid_record_inside_the_padding_is_corruption(tmp_path: Path) -> None:
    """Zeros, then a record that checks out: not a torn tail, and never silently dropped."""
    write_store(tmp_path, [entries(1, 3)], commit=1)
    (seg,) = segments(tmp_path)
    data = image([entries(1, 3)])
    with seg.open("r+b") as f:
        f.seek(len(data) + 64)
        f.write(encode_records(entries(4, 1))[0])
    with pytest.raises(CorruptionError, match="valid record follows") as info:
        load(tmp_path)
    assert f"offset {len(data)}" in str(info.value)


def closed_padded_segment(directory: Path) -> tuple[Path, bytes]:
    """Two segments, the first closed with zero padding (a later, smaller segment_size)."""
    write_store(directory, [entries(1, 3)])
    with LogStore(directory, segment_size=HEADER_SIZE + RECORD) as store:
        store.load()
        store.append(entries(4, 2))  # the first segment is full at the smaller size
    first, second = segments(directory)
    assert second.name == segment_name(4)
    assert first.stat().st_size == SEGMENT
    return first, image([entries(1, 3)])


def test_a_closed_segment_keeps_its_padding_and_loads(tmp_path: Path) -> None:
    closed_padded_segment(tmp_path)
    assert load(tmp_path) == [(i, 1) for i in range(1, 6)]
    assert load(tmp_path, segment_size=HEADER_SIZE + RECORD) == [(i, 1) for i in range(1, 6)]


@pytest.mark.parametrize("where", ["padding", "record", "lost record"])
def test_damage_in_a_closed_padded_segment_is_corruption(tmp_path: Path, where: str) -> None:
    first, data = closed_padded_segment(tmp_path)
    raw = bytearray(first.read_bytes())
    if where == "padding":  # garbage then zeros: a torn tail only in the newest segment
        raw[len(data) + 10] = 0x5A
        match = "non-final segment"
    elif where == "record":
        raw[HEADER_SIZE + RECORD + 3] ^= 0x01
        match = "non-final segment"
    else:  # the last record zeroed: the data ends early, so the next segment leaves a gap
        raw[len(data) - RECORD : len(data)] = bytes(RECORD)
        match = "gap in the log"
    first.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=match) as info:
        load(tmp_path)
    assert "offset" in str(info.value)


def test_truncated_entries_never_come_back(tmp_path: Path) -> None:
    write_store(tmp_path, [entries(1, 4), entries(5, 6)], commit=3)
    (seg,) = segments(tmp_path)
    dropped = encode_records(entries(5, 6))[0]
    with LogStore(tmp_path, segment_size=SEGMENT) as store:
        store.load()
        store.truncate_from(5)
        # Durable before truncate_from returns: the dropped bytes are zeros on disk now.
        assert seg.read_bytes() == image([entries(1, 4)]).ljust(SEGMENT, b"\x00")
    # A crash here (nothing appended after the cut) reloads without them ...
    assert load(tmp_path) == [(i, 1) for i in range(1, 5)]
    # ... and a shorter new suffix leaves no piece of the old one after it.
    with LogStore(tmp_path, segment_size=SEGMENT) as store:
        store.load()
        store.append(entries(5, 1, term=2))
    assert load(tmp_path) == [(i, 1) for i in range(1, 5)] + [(5, 2)]
    assert dropped[RECORD:] not in seg.read_bytes()


class Crash(BaseException):
    pass


@contextmanager
def crash_at(n: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Raise Crash at the ``n``-th pwrite, ftruncate or fdatasync; yield the call count."""
    count = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            count[0] += 1
            if count[0] == n:
                raise Crash
            return real(*args)

        return wrapper

    with monkeypatch.context() as patch:
        for module, name in ((os, "pwrite"), (os, "ftruncate"), (durable, "_datasync")):
            patch.setattr(module, name, wrap(getattr(module, name)))
        yield count


def test_a_crash_anywhere_in_a_truncation_never_resurrects_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash at each write, truncate or sync of a cut in a 3 MiB segment (several chunks of
    zeros), then reload and append a new suffix: the old entries 5.. are gone or all there."""
    size = 3 << 20
    outcomes = set()
    for n in range(1, 30):
        directory = tmp_path / str(n)
        with LogStore(directory, segment_size=size) as store:
            store.load()
            store.append(entries(1, 4))
            store.append(entries(5, 6))
            store.save_hard_state(HardState(1, 1, 3))
            with crash_at(n, monkeypatch) as count:
                try:
                    store.truncate_from(5)
                except Crash:
                    pass
        got = load(directory, size)
        assert got in ([(i, 1) for i in range(1, 11)], [(i, 1) for i in range(1, 5)]), n
        outcomes.add(len(got))
        with LogStore(directory, segment_size=size) as store:
            store.load()
            store.append(entries(len(got) + 1, 1, term=2))
        assert load(directory, size) == got + [(len(got) + 1, 2)], n
        if count[0] < n:  # the whole truncation ran: every crash point has been tried
            break
    assert outcomes == {4, 10}
    assert n > 5  # ftruncate, sync, three chunks of zeros, sync


def test_a_segment_written_before_preallocation_loads_and_takes_appends(tmp_path: Path) -> None:
    """The previous code wrote header + records and nothing more: the same encoders."""
    seg = tmp_path / segment_name(1)
    seg.write_bytes(image([entries(1, 2), entries(3, 2)]))
    assert load(tmp_path) == [(i, 1) for i in range(1, 5)]
    assert seg.stat().st_size == SEGMENT  # zero-filled on load, so appends need no growth
    with LogStore(tmp_path, segment_size=SEGMENT) as store:
        store.load()
        store.append(entries(5, 1))
    assert seg.read_bytes() == image([entries(1, 4), entries(5, 1)]).ljust(SEGMENT, b"\x00")
    assert load(tmp_path) == [(i, 1) for i in range(1, 6)]


def test_rollover_starts_a_new_preallocated_segment(tmp_path: Path) -> None:
    small = HEADER_SIZE + 4 * RECORD + 8
    with LogStore(tmp_path, segment_size=small) as store:
        store.load()
        for i in range(1, 14):
            store.append(entries(i, 1))
    names = [p.name for p in segments(tmp_path)]
    assert names == [segment_name(1), segment_name(6), segment_name(11)]
    # Five records fill each (the fifth grows it once); the newest is padded to the size.
    assert [p.stat().st_size for p in segments(tmp_path)] == [
        HEADER_SIZE + 5 * RECORD,
        HEADER_SIZE + 5 * RECORD,
        small,
    ]
    assert load(tmp_path, small) == [(i, 1) for i in range(1, 14)]


# -- properties ---------------------------------------------------------------------------

batch_lists = st.lists(st.integers(1, 6), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(batch_lists, st.integers(0, 3000), st.booleans())
def test_padding_decodes_like_the_end_of_the_file(
    sizes: list[int], padding: int, newest: bool
) -> None:
    batches, start = [], 1
    for size in sizes:
        batches.append(entries(start, size))
        start += size
    data = image(batches)
    path = Path("/nonexistent") / segment_name(1)
    plain = scan_segment(path, data, name_index=1, newest=newest, prev_term=0)
    padded = scan_segment(path, data + bytes(padding), name_index=1, newest=newest, prev_term=0)
    assert padded.entries == plain.entries == [e for b in batches for e in b]
    assert (padded.end, padded.damage, padded.size) == (len(data), None, len(data) + padding)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5), st.integers(0, 4)),
        st.tuples(st.just("reload"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([HEADER_SIZE + 30, 200, 1000]), operations)
def test_any_appends_and_conflicts_reload_as_the_model(
    segment_size: int, ops: list[tuple[str, int, int]]
) -> None:
    """Appends (``back`` > 0: a conflicting suffix from ``back`` entries before the end, in a
    new term) and reloads: every reload returns exactly the model log."""
    model: list[tuple[int, int]] = []
    term = 1
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        store = LogStore(directory, segment_size=segment_size)
        store.load()
        try:
            for kind, count, back in ops:
                if kind == "reload":
                    store.close()
                    assert load(directory, segment_size) == model
                    store = LogStore(directory, segment_size=segment_size)
                    store.load()
                    continue
                first = max(1, len(model) + 1 - back)
                if first <= len(model):
                    term += 1
                store.append(entries(first, count, term))
                model[first - 1 :] = [(i, term) for i in range(first, first + count)]
        finally:
            store.close()
        assert load(directory, segment_size) == model
        if model:
            assert segments(directory)[-1].stat().st_size >= segment_size
