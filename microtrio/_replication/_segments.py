"""On-disk format of Raft log segments: encoding, and hardened decoding of one segment file.

Theory of operation
-------------------
The log is a sequence of segment files ``log-<first index, 20 digits>.seg``. Every file
starts with a fixed header and is followed by records, one per entry, in index order::

    header  = magic "MTLG" | version u16 | flags u16 | first_index u64 | crc32 u32   (20 bytes)
    record  = length u32 | crc32 u32 | index u64 | term u64 | type u8 | data
              length = 17 + len(data)   (bytes after the crc field)
              crc32  = crc32(length field + index + term + type + data)

All integers are little-endian. A segment is only ever appended to, or cut short
(``ftruncate``) when the log is truncated, so after a crash the only legitimately damaged
bytes are the tail of the newest segment (an append that was not acknowledged because its
fsync never returned). :func:`scan_segment` decodes a whole file and reports exactly where
decoding stopped and why; it never guesses. Deciding whether a stop is a torn tail or
corruption is the caller's job (it knows the commit index), except that a damaged record
followed by a record that still checks out is always corruption, and any damage in a
segment that is not the newest is always corruption.

Every malformed field becomes :class:`microtrio.CorruptionError` naming the file and the
byte offset; no input, however mangled, raises anything else.
"""

from __future__ import annotations

import re
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import CorruptionError
from ..raft import Entry, EntryType

__all__ = [
    "HEADER_SIZE",
    "MAX_ENTRY_DATA",
    "RECORD_OVERHEAD",
    "SegmentScan",
    "encode_header",
    "encode_records",
    "parse_segment_name",
    "scan_segment",
    "segment_name",
]

MAGIC = b"MTLG"
VERSION = 1
_HEADER = struct.Struct("<4sHHQ")  # magic, version, flags, first index; crc32 follows
HEADER_SIZE = _HEADER.size + 4
_PREFIX = struct.Struct("<II")  # length, crc32
_BODY = struct.Struct("<QQB")  # index, term, type
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
RECORD_OVERHEAD = _PREFIX.size + _BODY.size  # 25 bytes around each entry's data
# Refuse absurd lengths before touching memory: an entry is one batch of changesets, far
# below this; a larger length field can only be damage.
MAX_RECORD_BODY = 1 << 30
MAX_ENTRY_DATA = MAX_RECORD_BODY - _BODY.size

_MAX_U64 = 2**64 - 1
_NAME_RE = re.compile(r"^log-(\d{20})\.seg$")


def segment_name(first_index: int) -> str:
    return f"log-{first_index:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """The first index encoded in a segment file name, or None if it is not one."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


def encode_header(first_index: int) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, 0, first_index)
    return head + _U32.pack(zlib.crc32(head))


def encode_records(entries: Sequence[Entry]) -> tuple[bytes, list[int]]:
    """Encode ``entries`` as records; also return each record's size (for offset tables)."""
    parts: list[bytes] = []
    sizes: list[int] = []
    for entry in entries:
        data = bytes(entry.data)
        if len(data) > MAX_ENTRY_DATA:
            raise ValueError(f"entry {entry.index} holds {len(data)} bytes, over {MAX_ENTRY_DATA}")
        length = _U32.pack(_BODY.size + len(data))
        body = _BODY.pack(entry.index, entry.term, int(entry.type))
        crc = zlib.crc32(data, zlib.crc32(body, zlib.crc32(length)))
        parts += (length, _U32.pack(crc), body, data)
        sizes.append(RECORD_OVERHEAD + len(data))
    return b"".join(parts), sizes


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What decoding one segment file found.

    ``entries``/``offsets``/``terms`` describe the good records (``offsets[i]`` is where the
    record of ``entries[i]`` starts). ``end`` is the offset just past the last good record.
    ``damage`` is None when the file decoded to its last byte; otherwise it says why
    decoding stopped at ``end`` (only ever set for the newest segment: elsewhere damage
    raises at once).
    """

    first_index: int
    entries: list[Entry]
    offsets: array[int]
    terms: array[int]
    end: int
    size: int
    damage: str | None


def _corrupt(path: Path, offset: int, what: str) -> CorruptionError:
    return CorruptionError(f"{path}: offset {offset}: {what}")


def _check_header(path: Path, buf: bytes, name_index: int) -> None:
    if len(buf) < HEADER_SIZE:
        raise _corrupt(path, 0, f"truncated segment header ({len(buf)} of {HEADER_SIZE} bytes)")
    magic, version, _flags, first_index = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise _corrupt(path, 0, f"bad magic {magic!r}: not a microtrio log segment")
    if version != VERSION:
        raise _corrupt(path, 4, f"unsupported segment format version {version}")
    (crc,) = _U32.unpack_from(buf, _HEADER.size)
    if crc != zlib.crc32(memoryview(buf)[: _HEADER.size]):
        raise _corrupt(path, 0, "segment header checksum mismatch")
    if first_index != name_index:
        raise _corrupt(path, 8, f"header first index {first_index} does not match the file name")


def _check_record(view: memoryview, pos: int) -> str | None:
    """None if a whole record with a valid checksum starts at ``pos``, else what is wrong."""
    remaining = len(view) - pos
    if remaining < RECORD_OVERHEAD:
        return f"truncated record header ({remaining} bytes left)"
    length, crc = _PREFIX.unpack_from(view, pos)
    if length < _BODY.size or length > MAX_RECORD_BODY:
        return f"invalid record length {length}"
    if length > remaining - _PREFIX.size:
        return f"record length {length} runs past the end of the file"
    start = pos + _PREFIX.size
    actual = zlib.crc32(view[start : start + length], zlib.crc32(view[pos : pos + 4]))
    if actual != crc:
        return "record checksum mismatch"
    return None


def _valid_record_after(buf: bytes, start: int, min_index: int) -> int | None:
    """Offset of the first position >= ``start`` holding a checksum-valid record, or None.

    Tells a torn tail (nothing valid after the damage) from damage in the middle (valid
    records follow). A genuine later record has a length that fits in the file and an index
    in ``[min_index, min_index + records that fit]``; a regular expression, run in C, finds
    the offsets whose length and index fields can be that, and only those are checksummed
    (a Python loop over every offset took seconds on a torn multi-megabyte entry).
    """
    remaining = len(buf) - start
    if remaining < RECORD_OVERHEAD or min_index > _MAX_U64:
        return None
    max_index = min(min_index + remaining // RECORD_OVERHEAD + 1, _MAX_U64)  # index is a u64
    highs = b"|".join(
        re.escape(struct.pack("<Q", high << 16)[2:])
        for high in range(min_index >> 16, (max_index >> 16) + 1)
    )
    # Below 16 MiB a length's top byte is 0 and, being >= 17, its low three bytes are not.
    length = rb"(?!\x00\x00\x00)...\x00" if remaining < 1 << 24 else rb"...."
    candidates = re.compile(rb"(?=" + length + rb"....(?:..)(?:" + highs + rb"))", re.DOTALL)
    view = memoryview(buf)
    for match in candidates.finditer(buf, start):
        pos = match.start()
        (index,) = _U64.unpack_from(buf, pos + _PREFIX.size)
        if index >= min_index and _check_record(view, pos) is None:
            return pos
    return None


def scan_segment(
    path: Path, buf: bytes, *, name_index: int, newest: bool, prev_term: int
) -> SegmentScan:
    """Decode the segment file ``path`` whose whole contents are ``buf``.

    ``name_index`` is the first index from the file name, ``prev_term`` the term of the
    entry before this segment (0 if none). Raises :class:`CorruptionError` for any damage,
    except a damaged tail of the ``newest`` segment with nothing valid after it, which is
    reported in :attr:`SegmentScan.damage` for the caller to judge.
    """
    _check_header(path, buf, name_index)
    view = memoryview(buf)
    entries: list[Entry] = []
    offsets: array[int] = array("Q")
    terms: array[int] = array("Q")
    expected = name_index
    pos = HEADER_SIZE
    while pos < len(buf):
        problem = _check_record(view, pos)
        if problem is not None:
            if not newest:
                raise _corrupt(path, pos, f"{problem} (entry {expected}) in a non-final segment")
            found = _valid_record_after(buf, pos + 1, expected)
            if found is not None:
                raise _corrupt(
                    path,
                    pos,
                    f"{problem} (entry {expected}), but a valid record follows at offset {found}",
                )
            return SegmentScan(name_index, entries, offsets, terms, pos, len(buf), problem)
        length, _crc = _PREFIX.unpack_from(view, pos)
        index, term, raw_type = _BODY.unpack_from(view, pos + _PREFIX.size)
        if index != expected:
            raise _corrupt(path, pos, f"gap in the log: expected entry {expected}, found {index}")
        if term < prev_term:
            raise _corrupt(
                path, pos, f"entry {index} has term {term} below the previous {prev_term}"
            )
        try:
            entry_type = EntryType(raw_type)
        except ValueError:
            raise _corrupt(path, pos, f"entry {index} has unknown type {raw_type}") from None
        data_start = pos + RECORD_OVERHEAD
        data = bytes(view[data_start : pos + _PREFIX.size + length])
        entries.append(Entry(term=term, index=index, type=entry_type, data=data))
        offsets.append(pos)
        terms.append(term)
        prev_term = term
        expected += 1
        pos += _PREFIX.size + length
    return SegmentScan(name_index, entries, offsets, terms, pos, len(buf), None)
