"""Atheris harness: the Raft transport frame and the messages inside it.

What the inbound Raft channel does with each record: decode the frame, then every payload. Only ProtocolError (CodecError is one) may come out. Run it with
``python -m tests.fuzz._atheris frame`` (see tests/fuzz/_atheris.py).
"""

from __future__ import annotations

from microtrio import ProtocolError
from microtrio._replication._transport import decode_frame, encode_frame
from microtrio.raft import MsgHeartbeat, MsgVote, decode_message, encode_message

SEEDS = [
    encode_frame(1, []),
    encode_frame(
        7, [encode_message(MsgHeartbeat(7, 2, 3, 4, 5)), encode_message(MsgVote(7, 2, 3, 4, 5))]
    ),
]


def one_input(data: bytes) -> None:
    try:
        frame = decode_frame(data, max_size=1 << 20)
        for payload in frame.payloads:
            decode_message(payload)
    except ProtocolError:
        return
    assert encode_frame(frame.sender, frame.payloads) == data
