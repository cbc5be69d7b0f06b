"""Forwarded proposals on the Raft channel, and the channel's wire codec.

A follower sends :class:`ForwardPropose` (one write batch) to the leader, which proposes it
and answers with :class:`ForwardResult` (the index and term it got, or why not). They
travel in the same frames as Raft messages: :data:`WIRE_CODEC` tags them with a leading
``0xF0`` byte; anything else is a Raft message of :mod:`microtrio.raft`'s own codec (whose
first byte is its schema version, 1)::

    header  = tag:u8 (=0xF0) kind:u8 src:u64 dst:u64 request_id:u64
    kind 1  ForwardPropose   data (the rest)
    kind 2  ForwardResult    status:u8 index:u64 term:u64 leader:u64
    kind 3  ForwardExecute   data (the rest: an encoded statement request, see _db/_statements)
    kind 4  ExecuteResult    status:u8 index:u64 leader:u64 data (the rest: the encoded reply)

A statement request (:class:`ForwardExecute`) is run by the leader in its write batch; its
:class:`ExecuteResult` carries the leader's applied index once the write is applied there,
which the asking member reaches before it answers its own caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, final

from ..raft import CodecError, Message, decode_message, encode_message
from ._transport import WireCodec

__all__ = [
    "WIRE_CODEC",
    "ExecuteResult",
    "ForwardExecute",
    "ForwardPropose",
    "ForwardResult",
    "ForwardStatus",
    "Wire",
    "decode_wire",
    "encode_wire",
]

_TAG: Final = 0xF0
_FWD_HEADER: Final = struct.Struct(">BBQQQ")  # tag, kind, src, dst, request id
_FWD_RESULT: Final = struct.Struct(">BQQQ")  # status, index, term, leader hint
_KIND_PROPOSE: Final = 1
_KIND_RESULT: Final = 2
_KIND_EXECUTE: Final = 3
_KIND_EXECUTE_RESULT: Final = 4
_EXEC_RESULT: Final = struct.Struct(">BQQ")  # status, index, leader hint


class ForwardStatus:
    """Status codes of a :class:`ForwardResult`."""

    OK: Final = 0
    NOT_LEADER: Final = 1  # not proposed (``leader`` is the hint, 0 = unknown)
    DROPPED: Final = 2  # not proposed (a leadership transfer runs)


@final
@dataclass(frozen=True, slots=True)
class ForwardPropose:
    """A follower asks the leader to propose ``data`` (one write batch)."""

    src: int
    dst: int
    request_id: int
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The leader's answer: proposed at (``index``, ``term``), or why not."""

    src: int
    dst: int
    request_id: int
    status: int
    index: int = 0
    term: int = 0
    leader: int = 0


@final
@dataclass(frozen=True, slots=True)
class ForwardExecute:
    """A member asks the leader to run an encoded statement request in its write batch."""

    src: int
    dst: int
    request_id: int
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """The leader's answer to :class:`ForwardExecute`: with status OK, ``data`` is the
    encoded reply and ``index`` the applied index to wait for; otherwise it did not run."""

    src: int
    dst: int
    request_id: int
    status: int
    index: int = 0
    leader: int = 0
    data: bytes = b""


Wire = Message | ForwardPropose | ForwardResult | ForwardExecute | ExecuteResult
"""Everything that travels on the Raft channel."""


def encode_wire(msg: Wire) -> bytes:
    if isinstance(msg, ForwardPropose):
        return _FWD_HEADER.pack(_TAG, _KIND_PROPOSE, msg.src, msg.dst, msg.request_id) + msg.data
    if isinstance(msg, ForwardResult):
        head = _FWD_HEADER.pack(_TAG, _KIND_RESULT, msg.src, msg.dst, msg.request_id)
        return head + _FWD_RESULT.pack(msg.status, msg.index, msg.term, msg.leader)
    if isinstance(msg, ForwardExecute):
        return _FWD_HEADER.pack(_TAG, _KIND_EXECUTE, msg.src, msg.dst, msg.request_id) + msg.data
    if isinstance(msg, ExecuteResult):
        head = _FWD_HEADER.pack(_TAG, _KIND_EXECUTE_RESULT, msg.src, msg.dst, msg.request_id)
        return head + _EXEC_RESULT.pack(msg.status, msg.index, msg.leader) + msg.data
    return encode_message(msg)


def decode_wire(data: bytes) -> Wire:
    """Decode one payload; raises :class:`~microtrio.raft.CodecError` on bad input."""
    if not data or data[0] != _TAG:
        return decode_message(data)
    if len(data) < _FWD_HEADER.size:
        raise CodecError("truncated forwarded-proposal header")
    _, kind, src, dst, request_id = _FWD_HEADER.unpack_from(data)
    body = data[_FWD_HEADER.size :]
    if kind == _KIND_PROPOSE:
        return ForwardPropose(src, dst, request_id, bytes(body))
    if kind == _KIND_RESULT:
        if len(body) != _FWD_RESULT.size:
            raise CodecError("bad forwarded-result length")
        status, index, term, leader = _FWD_RESULT.unpack(body)
        if status not in (ForwardStatus.OK, ForwardStatus.NOT_LEADER, ForwardStatus.DROPPED):
            raise CodecError(f"unknown forwarded-result status {status}")
        return ForwardResult(src, dst, request_id, status, index, term, leader)
    if kind == _KIND_EXECUTE:
        return ForwardExecute(src, dst, request_id, bytes(body))
    if kind == _KIND_EXECUTE_RESULT:
        if len(body) < _EXEC_RESULT.size:
            raise CodecError("truncated execute result")
        status, index, leader = _EXEC_RESULT.unpack_from(body)
        if status not in (ForwardStatus.OK, ForwardStatus.NOT_LEADER, ForwardStatus.DROPPED):
            raise CodecError(f"unknown execute-result status {status}")
        return ExecuteResult(
            src, dst, request_id, status, index, leader, bytes(body[_EXEC_RESULT.size :])
        )
    raise CodecError(f"unknown forwarded message kind {kind}")


WIRE_CODEC: Final[WireCodec[Wire]] = WireCodec(encode_wire, decode_wire, (CodecError,))
