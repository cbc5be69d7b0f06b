"""Atheris harness: the Raft wire codec (``decode_message``, ``decode_conf_state``).

Any input decodes, and re-encodes to something that decodes to the same value, or raises
CodecError. Run it with ``python -m tests.fuzz._atheris raft_codec`` (see
tests/fuzz/_atheris.py).
"""

from __future__ import annotations

from microtrio.raft import (
    CodecError,
    ConfState,
    Entry,
    EntryType,
    MsgApp,
    MsgReadIndex,
    MsgSnap,
    MsgTimeoutNow,
    Role,
    SnapshotMeta,
    decode_conf_state,
    decode_message,
    encode_conf_state,
    encode_message,
)

_CONF = ConfState.from_dict({1: Role.VOTER, 2: Role.STANDBY, 3: Role.SPARE})
SEEDS = [
    encode_message(MsgTimeoutNow(1, 2, 3)),
    encode_message(MsgReadIndex(1, 2, 0, b"ctx")),
    encode_message(MsgApp(1, 2, 3, 4, 5, (Entry(3, 5, EntryType.NORMAL, b"x"),), 4)),
    encode_message(MsgSnap(1, 2, 3, SnapshotMeta(9, 3, _CONF), 0, 10, b"chunk", False)),
    encode_conf_state(_CONF),
]


def one_input(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except CodecError:
        pass
    else:
        assert decode_message(encode_message(msg)) == msg
    try:
        conf = decode_conf_state(data)
    except CodecError:
        return
    assert decode_conf_state(encode_conf_state(conf)) == conf
