"""Property tests of the binary decoders: any input decodes or raises our specific error.

Covered: the Raft message codec (CodecError), the transport frame (ProtocolError) and the
replicated write batch (CorruptionError). Inputs are random bytes, valid encodings with
random edits (flipped, inserted and deleted bytes, absurd length and count fields), and
bodies behind a valid header so that decoding gets past the first checks. Whatever
decodes must survive a round trip: no decoder accepts bytes it would not produce itself.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from microtrio import CorruptionError, ProtocolError, ValidationError
from microtrio._db._payload import Op, OpKind, WriteBatch, decode_batch, encode_batch
from microtrio._replication._transport import decode_frame, encode_frame, parse_address
from microtrio.raft import (
    CodecError,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgReadIndexResp,
    MsgSnap,
    MsgVote,
    Role,
    SnapshotMeta,
    decode_conf_state,
    decode_message,
    encode_conf_state,
    encode_message,
)

from ._fuzz import edits, fuzz_settings, mutate

u64 = st.integers(0, 2**64 - 1)
node = st.integers(1, 2**64 - 1)
blob = st.binary(max_size=48)
entry = st.builds(Entry, u64, u64, st.sampled_from(list(EntryType)), blob)
confs = st.dictionaries(node, st.sampled_from(list(Role)), max_size=5).map(ConfState.from_dict)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(MsgApp, node, node, u64, u64, u64, st.lists(entry, max_size=4).map(tuple), u64),
    st.builds(MsgAppResp, node, node, u64, u64, st.booleans(), u64, u64),
    st.builds(MsgVote, node, node, u64, u64, u64, st.booleans()),
    st.builds(MsgHeartbeat, node, node, u64, u64, u64),
    st.builds(
        MsgSnap,
        node,
        node,
        u64,
        st.builds(SnapshotMeta, u64, u64, confs),
        u64,
        u64,
        blob,
        st.booleans(),
    ),
    st.builds(MsgReadIndexResp, node, node, u64, u64, blob),
)
_RAFT_HEADER = struct.Struct(">BBQQQ")


def check_raft(data: bytes) -> None:
    """``data`` decodes to a message that round-trips, or raises CodecError (nothing else)."""
    try:
        msg = decode_message(data)
    except CodecError:
        return
    assert decode_message(encode_message(msg)) == msg


@fuzz_settings(300)
@given(st.binary(max_size=256))
def test_raft_codec_random_bytes(data: bytes) -> None:
    check_raft(data)


@fuzz_settings(300)
@given(st.integers(0, 20), st.binary(max_size=200))
def test_raft_codec_random_body_behind_a_valid_header(kind: int, body: bytes) -> None:
    check_raft(_RAFT_HEADER.pack(1, kind, 1, 2, 3) + body)


@fuzz_settings(400)
@given(messages, edits)
def test_raft_codec_mutated_messages(msg: Message, changes: list[tuple[int, int, int]]) -> None:
    check_raft(mutate(encode_message(msg), changes))


@fuzz_settings(200)
@given(confs, edits)
def test_conf_state_mutated(conf: ConfState, changes: list[tuple[int, int, int]]) -> None:
    data = mutate(encode_conf_state(conf), changes)
    try:
        decoded = decode_conf_state(data)
    except CodecError:
        return
    assert decode_conf_state(encode_conf_state(decoded)) == decoded


def test_raft_codec_huge_counts_fail_fast() -> None:
    """A count or length field of 2**32 - 1 is refused without allocating for it."""
    app = encode_message(MsgApp(1, 2, 3, 4, 5, (), 6))
    huge = app[:-4] + b"\xff\xff\xff\xff"
    for data in (huge, huge + b"\x00" * 64):
        try:
            decode_message(data)
        except CodecError:
            continue
        raise AssertionError("a MsgApp claiming 2**32-1 entries decoded")


# -- transport frames ---------------------------------------------------------------------

payloads = st.lists(st.binary(max_size=40), max_size=5)


def check_frame(data: bytes, max_size: int = 1 << 16) -> None:
    try:
        frame = decode_frame(data, max_size=max_size)
    except ProtocolError:
        return
    assert frame.sender > 0
    assert encode_frame(frame.sender, frame.payloads) == data


@fuzz_settings(300)
@given(st.binary(max_size=200))
def test_frame_random_bytes(data: bytes) -> None:
    check_frame(data)


@fuzz_settings(300)
@given(node, payloads, edits)
def test_frame_mutated(
    sender: int, items: list[bytes], changes: list[tuple[int, int, int]]
) -> None:
    check_frame(mutate(encode_frame(sender, items), changes))


@fuzz_settings(100)
@given(node, payloads, st.integers(0, 64))
def test_frame_size_limit(sender: int, items: list[bytes], limit: int) -> None:
    data = encode_frame(sender, items)
    try:
        decode_frame(data, max_size=limit)
    except ProtocolError:
        assert len(data) > limit
    else:
        assert len(data) <= limit


# -- replicated write batches -------------------------------------------------------------

batches = st.builds(
    WriteBatch,
    u64,
    st.lists(st.builds(Op, st.sampled_from(list(OpKind)), blob), max_size=5).map(tuple),
)


def check_batch(data: bytes) -> None:
    try:
        batch = decode_batch(data)
    except CorruptionError:
        return
    assert encode_batch(batch) == data


@fuzz_settings(200)
@given(st.binary(max_size=200))
def test_batch_random_bytes(data: bytes) -> None:
    check_batch(b"MTDB\x01" + data)
    check_batch(data)


@fuzz_settings(300)
@given(batches, edits)
def test_batch_mutated(batch: WriteBatch, changes: list[tuple[int, int, int]]) -> None:
    check_batch(mutate(encode_batch(batch), changes))


@fuzz_settings(200)
@given(
    st.text(max_size=30)
    | st.builds("10.0.0.1:{}".format, st.text("0123456789\u00b2\u0663", max_size=6))
)
def test_peer_address_parser(address: str) -> None:
    """The transport's own address parser: a (host, port) or ValidationError."""
    try:
        host, port = parse_address(address)
    except ValidationError:
        return
    assert host and 0 < port < 65536


def test_peer_address_with_non_ascii_or_long_port_is_refused() -> None:
    for port in ("\u00b2", "\u0663", "9" * 5000):
        try:
            parse_address(f"10.0.0.1:{port}")
        except ValidationError:
            continue
        raise AssertionError(f"port {port[:10]!r} accepted")
