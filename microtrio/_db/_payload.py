"""The replicated write-batch format (one Raft entry's data).

Version 1, big-endian::

    magic "MTDB" | version u8 | base_index u64 | op count u32
    then per op: kind u8 | length u32 | data

``base_index`` is the index of the last data-changing entry in the state the batch
was executed on; the Applier refuses (deterministically, on every member) a batch
whose base is older than the current state. Kinds: ``CHANGESET`` (an SQLite session
changeset), ``SQL`` (UTF-8 text of one schema statement), ``SEQUENCE`` (UTF-8 JSON
object ``{table: seq}`` of ``sqlite_sequence`` values, which sessions do not record).
Never pickle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .._errors import CorruptionError

__all__ = ["FORMAT_VERSION", "Op", "OpKind", "WriteBatch", "decode_batch", "encode_batch"]

MAGIC = b"MTDB"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBQI")
_OP = struct.Struct(">BI")


class OpKind(IntEnum):
    CHANGESET = 1
    SQL = 2
    SEQUENCE = 3


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteBatch:
    base_index: int
    ops: tuple[Op, ...]


def encode_batch(batch: WriteBatch) -> bytes:
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, batch.base_index, len(batch.ops))]
    for op in batch.ops:
        parts.append(_OP.pack(int(op.kind), len(op.data)))
        parts.append(op.data)
    return b"".join(parts)


def decode_batch(payload: bytes) -> WriteBatch:
    """Decode a payload; a malformed one raises :class:`CorruptionError`."""
    view = memoryview(payload)
    if len(view) < _HEADER.size:
        raise CorruptionError("write batch too short")
    magic, version, base, count = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise CorruptionError("not a microtrio write batch")
    if version != FORMAT_VERSION:
        raise CorruptionError(f"unsupported write batch format version {version}")
    pos = _HEADER.size
    ops: list[Op] = []
    for _ in range(count):
        if pos + _OP.size > len(view):
            raise CorruptionError("truncated write batch")
        kind, length = _OP.unpack_from(view, pos)
        pos += _OP.size
        if pos + length > len(view):
            raise CorruptionError("truncated write batch")
        try:
            op_kind = OpKind(kind)
        except ValueError as exc:
            raise CorruptionError(f"unknown write batch op {kind}") from exc
        ops.append(Op(op_kind, bytes(view[pos : pos + length])))
        pos += length
    if pos != len(view):
        raise CorruptionError("trailing bytes after write batch")
    return WriteBatch(base_index=base, ops=tuple(ops))
