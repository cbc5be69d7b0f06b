"""Snapshot files and the hard-state file: formats, atomic writes, hardened reads.

Snapshot file ``snapshot-<term>-<index>.snap`` (integers little-endian)::

    header = magic "MTSN" | version u16 | flags u16 | index u64 | term u64
             | conf_len u32 | data_len u64 | crc32(header fields) u32          (40 bytes)
    body   = conf (microtrio.raft's versioned ConfState encoding) | data
             | crc32(conf + data) u32

Hard-state file ``hardstate``::

    magic "MTHS" | version u16 | flags u16 | term u64 | vote u64 | commit u64 | crc32 u32

Both are written as ``<name>.tmp``, fsynced, renamed over the final name, and the directory
fsynced, so a file under its final name is always complete; a damaged one is corruption.
Blocking functions: run them in a thread. OSError propagates for the caller to map.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

from .._errors import CorruptionError
from ..raft import (
    CodecError,
    HardState,
    Snapshot,
    SnapshotMeta,
    decode_conf_state,
    encode_conf_state,
)
from ._durable import atomic_write, fsync_dir

__all__ = [
    "HARD_STATE_NAME",
    "list_snapshots",
    "read_hard_state",
    "read_snapshot",
    "remove_snapshots_before",
    "snapshot_name",
    "write_hard_state",
    "write_snapshot",
]

logger = logging.getLogger("microtrio.replication.storage")

_SNAP_MAGIC = b"MTSN"
_SNAP_VERSION = 1
_SNAP_HEADER = struct.Struct("<4sHHQQIQ")  # magic, version, flags, index, term, conf, data
_SNAP_HEADER_SIZE = _SNAP_HEADER.size + 4
_U32 = struct.Struct("<I")
_SNAP_RE = re.compile(r"^snapshot-(\d+)-(\d+)\.snap$")

HARD_STATE_NAME = "hardstate"
_HS_MAGIC = b"MTHS"
_HS_VERSION = 1
_HS = struct.Struct("<4sHHQQQ")
_HS_SIZE = _HS.size + 4


def _corrupt(path: Path, offset: int, what: str) -> CorruptionError:
    return CorruptionError(f"{path}: offset {offset}: {what}")


# -- hard state ---------------------------------------------------------------------------


def write_hard_state(directory: Path, hard_state: HardState) -> None:
    record = _HS.pack(
        _HS_MAGIC, _HS_VERSION, 0, hard_state.term, hard_state.vote, hard_state.commit
    )
    atomic_write(directory / HARD_STATE_NAME, [record, _U32.pack(zlib.crc32(record))])


def read_hard_state(directory: Path) -> HardState:
    """The saved hard state, or the initial one if none was ever saved."""
    path = directory / HARD_STATE_NAME
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        return HardState()
    if len(buf) != _HS_SIZE:
        raise _corrupt(
            path, min(len(buf), _HS_SIZE), f"hard state is {len(buf)} bytes, not {_HS_SIZE}"
        )
    magic, version, _flags, term, vote, commit = _HS.unpack_from(buf, 0)
    if magic != _HS_MAGIC:
        raise _corrupt(path, 0, f"bad magic {magic!r}: not a microtrio hard-state file")
    if version != _HS_VERSION:
        raise _corrupt(path, 4, f"unsupported hard-state format version {version}")
    if _U32.unpack_from(buf, _HS.size)[0] != zlib.crc32(buf[: _HS.size]):
        raise _corrupt(path, _HS.size, "hard state checksum mismatch")
    return HardState(term=term, vote=vote, commit=commit)


# -- snapshots ----------------------------------------------------------------------------


def snapshot_name(term: int, index: int) -> str:
    return f"snapshot-{term}-{index}.snap"


def list_snapshots(directory: Path) -> list[tuple[int, int, Path]]:
    """Snapshot files under their final names as ``(index, term, path)``, oldest first."""
    found: list[tuple[int, int, Path]] = []
    for name in os.listdir(directory):
        match = _SNAP_RE.match(name)
        if match:
            found.append((int(match.group(2)), int(match.group(1)), directory / name))
    found.sort()
    return found


def write_snapshot(directory: Path, snapshot: Snapshot) -> Path:
    """Write ``snapshot`` durably under its final name (atomic) and return the path."""
    meta = snapshot.meta
    conf = encode_conf_state(meta.conf)
    data = bytes(snapshot.data)
    head = _SNAP_HEADER.pack(
        _SNAP_MAGIC, _SNAP_VERSION, 0, meta.index, meta.term, len(conf), len(data)
    )
    path = directory / snapshot_name(meta.term, meta.index)
    body_crc = zlib.crc32(data, zlib.crc32(conf))
    atomic_write(path, [head, _U32.pack(zlib.crc32(head)), conf, data, _U32.pack(body_crc)])
    return path


def remove_snapshots_before(directory: Path, keep: Path) -> None:
    """Delete every snapshot file except ``keep`` (call once ``keep`` is durable)."""
    removed = False
    for _index, _term, path in list_snapshots(directory):
        if path != keep:
            path.unlink(missing_ok=True)
            removed = True
            logger.debug("removed superseded snapshot %s", path)
    if removed:
        fsync_dir(directory)


def read_snapshot(path: Path) -> Snapshot:
    """Read and fully verify one snapshot file."""
    buf = path.read_bytes()
    if len(buf) < _SNAP_HEADER_SIZE:
        raise _corrupt(path, 0, f"truncated snapshot header ({len(buf)} bytes)")
    magic, version, _flags, index, term, conf_len, data_len = _SNAP_HEADER.unpack_from(buf, 0)
    if magic != _SNAP_MAGIC:
        raise _corrupt(path, 0, f"bad magic {magic!r}: not a microtrio snapshot")
    if version != _SNAP_VERSION:
        raise _corrupt(path, 4, f"unsupported snapshot format version {version}")
    if _U32.unpack_from(buf, _SNAP_HEADER.size)[0] != zlib.crc32(buf[: _SNAP_HEADER.size]):
        raise _corrupt(path, 0, "snapshot header checksum mismatch")
    match = _SNAP_RE.match(path.name)
    if match is None or (int(match.group(1)), int(match.group(2))) != (term, index):
        raise _corrupt(path, 8, f"header (term {term}, index {index}) does not match the name")
    expected = _SNAP_HEADER_SIZE + conf_len + data_len + 4
    if len(buf) != expected:
        raise _corrupt(
            path,
            min(len(buf), expected),
            f"snapshot is {len(buf)} bytes, its header promises {expected}",
        )
    view = memoryview(buf)
    conf_end = _SNAP_HEADER_SIZE + conf_len
    data_end = conf_end + data_len
    body_crc = zlib.crc32(view[conf_end:data_end], zlib.crc32(view[_SNAP_HEADER_SIZE:conf_end]))
    if _U32.unpack_from(buf, data_end)[0] != body_crc:
        raise _corrupt(path, _SNAP_HEADER_SIZE, "snapshot body checksum mismatch")
    try:
        conf = decode_conf_state(bytes(view[_SNAP_HEADER_SIZE:conf_end]))
    except (CodecError, ValueError) as exc:
        raise _corrupt(path, _SNAP_HEADER_SIZE, f"bad membership: {exc}") from exc
    return Snapshot(SnapshotMeta(index=index, term=term, conf=conf), bytes(view[conf_end:data_end]))
