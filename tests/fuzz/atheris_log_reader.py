"""Atheris harness: the durable-log readers (segments, snapshots, hard state, write batches).

The first input byte picks the target and whether checksums are recomputed (so the fuzzer
reaches the fields behind them); the rest is the file body. Only CorruptionError may come
out, and it names the file. Files are written under a temporary directory (use a tmpfs
for speed). Run it with ``python -m tests.fuzz._atheris log_reader`` (see
tests/fuzz/_atheris.py).
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path

from microtrio import CorruptionError
from microtrio._db._payload import Op, OpKind, WriteBatch, decode_batch, encode_batch
from microtrio._replication._segments import encode_header, encode_records, scan_segment
from microtrio._replication._snapshots import read_hard_state, read_snapshot, snapshot_name
from microtrio.raft import Entry, EntryType

_SEG = Path("/fuzz/log-00000000000000000001.seg")
_SNAP_HEADER = struct.Struct("<4sHHQQIQ")
_TMP = tempfile.TemporaryDirectory(prefix="microtrio-atheris-")
SEEDS = [
    b"\x00" + encode_records([Entry(1, 1, EntryType.NORMAL, b"abc")])[0],
    b"\x01" + encode_records([Entry(1, 1, EntryType.NOOP, b"")])[0],
    b"\x04" + encode_batch(WriteBatch(3, (Op(OpKind.SQL, b"CREATE TABLE t (x)"),))),
]


def _with_record_crcs(body: bytes) -> bytes:
    """Recompute the checksum of each record as the length fields delimit them."""
    out, pos = bytearray(), 0
    while pos + 8 <= len(body):
        (length,) = struct.unpack_from("<I", body, pos)
        chunk = body[pos + 8 : pos + 8 + length]
        crc = zlib.crc32(chunk, zlib.crc32(body[pos : pos + 4]))
        out += body[pos : pos + 4] + struct.pack("<I", crc) + chunk
        pos += 8 + length
    return bytes(out + body[pos:])


def _segment(body: bytes, newest: bool) -> None:
    try:
        scan_segment(_SEG, encode_header(1) + body, name_index=1, newest=newest, prev_term=0)
    except CorruptionError as exc:
        assert str(_SEG) in str(exc)


def _snapshot(body: bytes) -> None:
    index, term = 5, 2
    head = _SNAP_HEADER.pack(b"MTSN", 1, 0, index, term, min(len(body), 2**32 - 1) // 2, 0)
    fields = head + struct.pack("<I", zlib.crc32(head)) + body
    path = Path(_TMP.name) / snapshot_name(term, index)
    path.write_bytes(fields + struct.pack("<I", zlib.crc32(body)))
    try:
        read_snapshot(path)
    except CorruptionError as exc:
        assert str(path) in str(exc)


def _hard_state(body: bytes) -> None:
    path = Path(_TMP.name) / "hardstate"
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    try:
        read_hard_state(Path(_TMP.name))
    except CorruptionError as exc:
        assert str(path) in str(exc)


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 6, data[1:]
    if mode == 0:
        _segment(_with_record_crcs(body), newest=True)
    elif mode == 1:
        _segment(_with_record_crcs(body), newest=False)
    elif mode == 2:
        _segment(body, newest=True)
    elif mode == 3:
        _snapshot(body)
    elif mode == 4:
        try:
            batch = decode_batch(body)
        except CorruptionError:
            return
        assert encode_batch(batch) == body
    else:
        _hard_state(b"MTHS\x01\x00\x00\x00" + body)
