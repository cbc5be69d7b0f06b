"""Binary codec for Raft messages (explicit, versioned schema; never pickle).

Schema version 1, all integers big-endian and unsigned::

    message   = version:u8 (=1) kind:u8 src:u64 dst:u64 term:u64 body
    bytes     = len:u32 raw[len]
    bool      = u8 (0 or 1)
    entry     = term:u64 index:u64 type:u8 bytes
    conf      = count:u32 (id:u64 role:u8)*count       role: 0 voter, 1 stand-by, 2 spare
    snapmeta  = index:u64 term:u64 conf

    kind  body
    1  App            prev_index:u64 prev_term:u64 commit:u64 count:u32 entry*count
    2  AppResp        index:u64 reject:bool reject_hint:u64 log_term:u64
    3  Vote           last_index:u64 last_term:u64 transfer:bool
    4  VoteResp       reject:bool
    5  PreVote        last_index:u64 last_term:u64
    6  PreVoteResp    reject:bool
    7  Heartbeat      commit:u64 read_round:u64
    8  HeartbeatResp  read_round:u64
    9  Snap           snapmeta offset:u64 total:u64 done:bool bytes
    10 SnapResp       index:u64 offset:u64 done:bool
    11 TimeoutNow     (empty)
    12 ReadIndex      bytes
    13 ReadIndexResp  index:u64 bytes
    14 AppNoAck       as App (an App with ``ack=False``: answered only when it mismatches)

Decoding rejects unknown versions and kinds, truncated input and trailing bytes with
:class:`CodecError`. A CONF_CHANGE entry's data is ``version:u8 conf`` (see
:func:`encode_conf_state`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ._errors import CodecError
from ._messages import (
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgSnap,
    MsgSnapResp,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
)
from ._types import ConfState, Entry, EntryType, Role, SnapshotMeta

__all__ = [
    "SCHEMA_VERSION",
    "decode_conf_state",
    "decode_message",
    "encode_conf_state",
    "encode_message",
]

SCHEMA_VERSION = 1

_HEADER = struct.Struct(">BBQQQ")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_Q2 = struct.Struct(">QQ")
_Q3 = struct.Struct(">QQQ")
_ENTRY = struct.Struct(">QQBI")
_MEMBER = struct.Struct(">QB")
_ROLE_CODES = {Role.VOTER: 0, Role.STANDBY: 1, Role.SPARE: 2}
_ROLES = {v: k for k, v in _ROLE_CODES.items()}
_ENTRY_TYPES = {int(t): t for t in EntryType}


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        end = self.pos + st.size
        if end > len(self.buf):
            raise CodecError("truncated message")
        out = st.unpack_from(self.buf, self.pos)
        self.pos = end
        return out

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def flag(self) -> bool:
        (v,) = self.unpack(_U8)
        if v > 1:
            raise CodecError(f"bad boolean {v}")
        return v == 1

    def raw(self) -> bytes:
        (n,) = self.unpack(_U32)
        return self.take(n)

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise CodecError("truncated message")
        out = bytes(self.buf[self.pos : end])
        self.pos = end
        return out

    def entry(self) -> Entry:
        term, index, kind, n = self.unpack(_ENTRY)
        etype = _ENTRY_TYPES.get(kind)
        if etype is None:
            raise CodecError(f"unknown entry type {kind}")
        return Entry(term, index, etype, self.take(n))

    def conf(self) -> ConfState:
        (count,) = self.unpack(_U32)
        members: dict[int, Role] = {}
        for _ in range(count):
            node, code = self.unpack(_MEMBER)
            role = _ROLES.get(code)
            if role is None:
                raise CodecError(f"unknown role code {code}")
            if node == 0 or node in members:
                raise CodecError(f"bad member id {node}")
            members[node] = role
        return ConfState.from_dict(members)

    def meta(self) -> SnapshotMeta:
        index, term = self.unpack(_Q2)
        return SnapshotMeta(index, term, self.conf())


def _raw(out: bytearray, data: bytes) -> None:
    out += _U32.pack(len(data))
    out += data


def _conf(out: bytearray, conf: ConfState) -> None:
    members = conf.as_dict()
    out += _U32.pack(len(members))
    for node, role in members.items():
        out += _MEMBER.pack(node, _ROLE_CODES[role])


def _entries(out: bytearray, entries: tuple[Entry, ...]) -> None:
    out += _U32.pack(len(entries))
    pack = _ENTRY.pack
    for e in entries:
        out += pack(e.term, e.index, e.type, len(e.data))
        out += e.data


def _body(out: bytearray, msg: Message) -> int:
    """Append ``msg``'s body to ``out``; return its kind code."""
    match msg:
        case MsgApp():
            out += _Q3.pack(msg.prev_index, msg.prev_term, msg.commit)
            _entries(out, msg.entries)
            return 1 if msg.ack else 14
        case MsgAppResp():
            out += _U64.pack(msg.index) + _U8.pack(msg.reject)
            out += _Q2.pack(msg.reject_hint, msg.log_term)
            return 2
        case MsgVote():
            out += _Q2.pack(msg.last_index, msg.last_term) + _U8.pack(msg.transfer)
            return 3
        case MsgVoteResp():
            out += _U8.pack(msg.reject)
            return 4
        case MsgPreVote():
            out += _Q2.pack(msg.last_index, msg.last_term)
            return 5
        case MsgPreVoteResp():
            out += _U8.pack(msg.reject)
            return 6
        case MsgHeartbeat():
            out += _Q2.pack(msg.commit, msg.read_round)
            return 7
        case MsgHeartbeatResp():
            out += _U64.pack(msg.read_round)
            return 8
        case MsgSnap():
            out += _Q2.pack(msg.meta.index, msg.meta.term)
            _conf(out, msg.meta.conf)
            out += _Q2.pack(msg.offset, msg.total) + _U8.pack(msg.done)
            _raw(out, msg.data)
            return 9
        case MsgSnapResp():
            out += _Q2.pack(msg.index, msg.offset) + _U8.pack(msg.done)
            return 10
        case MsgTimeoutNow():
            return 11
        case MsgReadIndex():
            _raw(out, msg.ctx)
            return 12
        case MsgReadIndexResp():
            out += _U64.pack(msg.index)
            _raw(out, msg.ctx)
            return 13
    raise CodecError(f"not a Raft message: {type(msg).__name__}")


def encode_message(msg: Message) -> bytes:
    """Encode one message (schema version 1)."""
    body = bytearray()
    try:
        kind = _body(body, msg)
        return _HEADER.pack(SCHEMA_VERSION, kind, msg.src, msg.dst, msg.term) + bytes(body)
    except struct.error as exc:
        raise CodecError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def _d_app(r: _Reader, s: int, d: int, t: int) -> Message:
    prev_index, prev_term, commit = r.unpack(_Q3)
    (count,) = r.unpack(_U32)
    entries = tuple(r.entry() for _ in range(count))
    return MsgApp(s, d, t, prev_index, prev_term, entries, commit)


def _d_app_no_ack(r: _Reader, s: int, d: int, t: int) -> Message:
    app = _d_app(r, s, d, t)
    assert isinstance(app, MsgApp)
    return MsgApp(s, d, t, app.prev_index, app.prev_term, app.entries, app.commit, ack=False)


def _d_app_resp(r: _Reader, s: int, d: int, t: int) -> Message:
    index = r.u64()
    reject = r.flag()
    hint, log_term = r.unpack(_Q2)
    return MsgAppResp(s, d, t, index, reject, hint, log_term)


def _d_vote(r: _Reader, s: int, d: int, t: int) -> Message:
    last_index, last_term = r.unpack(_Q2)
    return MsgVote(s, d, t, last_index, last_term, r.flag())


def _d_pre_vote(r: _Reader, s: int, d: int, t: int) -> Message:
    last_index, last_term = r.unpack(_Q2)
    return MsgPreVote(s, d, t, last_index, last_term)


def _d_heartbeat(r: _Reader, s: int, d: int, t: int) -> Message:
    commit, read_round = r.unpack(_Q2)
    return MsgHeartbeat(s, d, t, commit, read_round)


def _d_snap(r: _Reader, s: int, d: int, t: int) -> Message:
    meta = r.meta()
    offset, total = r.unpack(_Q2)
    done = r.flag()
    return MsgSnap(s, d, t, meta, offset, total, r.raw(), done)


def _d_snap_resp(r: _Reader, s: int, d: int, t: int) -> Message:
    index, offset = r.unpack(_Q2)
    return MsgSnapResp(s, d, t, index, offset, r.flag())


def _d_read_resp(r: _Reader, s: int, d: int, t: int) -> Message:
    index = r.u64()
    return MsgReadIndexResp(s, d, t, index, r.raw())


_DECODERS: dict[int, Callable[[_Reader, int, int, int], Message]] = {
    1: _d_app,
    2: _d_app_resp,
    3: _d_vote,
    4: lambda r, s, d, t: MsgVoteResp(s, d, t, r.flag()),
    5: _d_pre_vote,
    6: lambda r, s, d, t: MsgPreVoteResp(s, d, t, r.flag()),
    7: _d_heartbeat,
    8: lambda r, s, d, t: MsgHeartbeatResp(s, d, t, r.u64()),
    9: _d_snap,
    10: _d_snap_resp,
    11: lambda r, s, d, t: MsgTimeoutNow(s, d, t),
    12: lambda r, s, d, t: MsgReadIndex(s, d, t, r.raw()),
    13: _d_read_resp,
    14: _d_app_no_ack,
}


def decode_message(data: bytes) -> Message:
    """Decode one message; raise :class:`CodecError` on anything but an exact valid encoding."""
    r = _Reader(data)
    version, kind, src, dst, term = r.unpack(_HEADER)
    if version != SCHEMA_VERSION:
        raise CodecError(f"unsupported schema version {version}")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise CodecError(f"unknown message kind {kind}")
    msg = decoder(r, src, dst, term)
    if r.pos != len(data):
        raise CodecError(f"{len(data) - r.pos} trailing bytes")
    return msg


def encode_conf_state(conf: ConfState) -> bytes:
    """Encode a configuration (the data of a CONF_CHANGE entry)."""
    out = bytearray(_U8.pack(SCHEMA_VERSION))
    _conf(out, conf)
    return bytes(out)


def decode_conf_state(data: bytes) -> ConfState:
    r = _Reader(data)
    (version,) = r.unpack(_U8)
    if version != SCHEMA_VERSION:
        raise CodecError(f"unsupported schema version {version}")
    conf = r.conf()
    if r.pos != len(data):
        raise CodecError(f"{len(data) - r.pos} trailing bytes")
    return conf
