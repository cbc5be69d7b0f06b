"""Round trips and rejections of the versioned binary message codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microtrio.raft import (
    CodecError,
    ConfState,
    Entry,
    EntryType,
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
    Role,
    SnapshotMeta,
    decode_conf_state,
    decode_message,
    encode_conf_state,
    encode_message,
)

u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 2**40)
node = st.integers(1, 2**32)
blob = st.binary(max_size=64)
entries = st.lists(
    st.builds(Entry, small, small, st.sampled_from(list(EntryType)), blob), max_size=5
).map(tuple)
confs = st.dictionaries(node, st.sampled_from(list(Role)), max_size=6).map(ConfState.from_dict)
metas = st.builds(SnapshotMeta, small, small, confs)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(MsgApp, node, node, u64, u64, u64, entries, u64),
    st.builds(MsgAppResp, node, node, u64, u64, st.booleans(), u64, u64),
    st.builds(MsgVote, node, node, u64, u64, u64, st.booleans()),
    st.builds(MsgVoteResp, node, node, u64, st.booleans()),
    st.builds(MsgPreVote, node, node, u64, u64, u64),
    st.builds(MsgPreVoteResp, node, node, u64, st.booleans()),
    st.builds(MsgHeartbeat, node, node, u64, u64, u64),
    st.builds(MsgHeartbeatResp, node, node, u64, u64),
    st.builds(MsgSnap, node, node, u64, metas, u64, u64, blob, st.booleans()),
    st.builds(MsgSnapResp, node, node, u64, u64, u64, st.booleans()),
    st.builds(MsgTimeoutNow, node, node, u64),
    st.builds(MsgReadIndex, node, node, st.just(0), blob),
    st.builds(MsgReadIndexResp, node, node, st.just(0), u64, blob),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_truncated_input_is_rejected(msg: Message, data: st.DataObject) -> None:
    raw = encode_message(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CodecError):
        decode_message(raw[:cut])


@settings(max_examples=100, deadline=None)
@given(messages, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected(msg: Message, extra: bytes) -> None:
    with pytest.raises(CodecError, match="trailing"):
        decode_message(encode_message(msg) + extra)


def test_unknown_version_and_kind_are_rejected() -> None:
    raw = bytearray(encode_message(MsgTimeoutNow(1, 2, 3)))
    raw[0] = 2
    with pytest.raises(CodecError, match="version"):
        decode_message(bytes(raw))
    raw[0], raw[1] = 1, 200
    with pytest.raises(CodecError, match="kind"):
        decode_message(bytes(raw))


def test_bad_enum_and_bool_values_are_rejected() -> None:
    app = MsgApp(1, 2, 3, 4, 5, (Entry(1, 5, EntryType.NORMAL, b"x"),), 6)
    raw = bytearray(encode_message(app))
    type_at = struct.calcsize(">BBQQQ") + 24 + 4 + 16
    assert raw[type_at] == 0
    raw[type_at] = 77
    with pytest.raises(CodecError, match="entry type"):
        decode_message(bytes(raw))
    vote = bytearray(encode_message(MsgVoteResp(1, 2, 3, True)))
    vote[-1] = 2
    with pytest.raises(CodecError, match="boolean"):
        decode_message(bytes(vote))


def test_wire_format_is_stable() -> None:
    """Version 1 of the schema, byte for byte (peers of other versions depend on it)."""
    raw = encode_message(MsgVoteResp(1, 2, 3, True))
    assert raw == bytes([1, 4]) + (1).to_bytes(8) + (2).to_bytes(8) + (3).to_bytes(8) + b"\x01"


def test_not_a_message_is_rejected() -> None:
    with pytest.raises(CodecError):
        encode_message("hello")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode_message(MsgTimeoutNow(1, 2, -1))


@given(confs)
def test_conf_state_round_trip(conf: ConfState) -> None:
    assert decode_conf_state(encode_conf_state(conf)) == conf


def test_conf_state_rejects_duplicates_and_trailing() -> None:
    good = encode_conf_state(ConfState.from_dict({1: Role.VOTER}))
    with pytest.raises(CodecError):
        decode_conf_state(good + b"\x00")
    dup = bytes([1]) + (2).to_bytes(4) + ((1).to_bytes(8) + b"\x00") * 2
    with pytest.raises(CodecError, match="member"):
        decode_conf_state(dup)
