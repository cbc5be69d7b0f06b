"""A trusted but faulty (or hostile) peer cannot crash the Raft core with decodable messages.

The transport only checks that a message decodes and comes from the frame's sender; what
is inside (terms, indexes, entries, membership) is the core's to judge. Here node 1 of a
three-voter cluster steps random sequences of well-formed messages and ticks, handling
every Ready, and may only refuse with one of our errors (a DivergenceError for a peer that
contradicts committed entries, for instance), never crash with anything else.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from microtrio import MicrotrioError
from microtrio.raft import (
    Config,
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
    RaftNode,
    Role,
    SnapshotMeta,
    bootstrap_state,
    decode_message,
    encode_conf_state,
    encode_message,
)

from ._fuzz import fuzz_settings

ME = 1
peer = st.sampled_from([2, 3, 2, 3, 9])
term = st.integers(0, 6) | st.just(2**64 - 1)
index = st.integers(0, 10) | st.just(2**64 - 1)
conf = st.sampled_from(
    [
        ConfState.of_voters([1, 2, 3]),
        ConfState.of_voters([2, 3]),
        ConfState.from_dict({1: Role.STANDBY, 2: Role.VOTER}),
    ]
)
data = st.sampled_from([b"", b"x", b"\x00" * 8]) | conf.map(encode_conf_state)
entries = st.lists(
    st.builds(Entry, term, index, st.sampled_from(list(EntryType)), data), max_size=3
).map(tuple)
ctx = st.sampled_from([b"", b"r1"])
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        lambda src, t, prev, prev_term, ents, commit: MsgApp(
            src, ME, t, prev, prev_term,
            tuple(Entry(e.term, prev + 1 + k, e.type, e.data) for k, e in enumerate(ents)),
            commit,
        ),
        peer, term, index, term, entries, index,
    ),
    st.builds(MsgAppResp, peer, st.just(ME), term, index, st.booleans(), index, term),
    st.builds(MsgVote, peer, st.just(ME), term, index, term, st.booleans()),
    st.builds(MsgVoteResp, peer, st.just(ME), term, st.booleans()),
    st.builds(MsgPreVote, peer, st.just(ME), term, index, term),
    st.builds(MsgPreVoteResp, peer, st.just(ME), term, st.booleans()),
    st.builds(MsgHeartbeat, peer, st.just(ME), term, index, st.integers(0, 3)),
    st.builds(MsgHeartbeatResp, peer, st.just(ME), term, st.integers(0, 3)),
    st.builds(
        MsgSnap, peer, st.just(ME), term, st.builds(SnapshotMeta, index, term, conf),
        st.integers(0, 8), st.integers(0, 8), st.sampled_from([b"", b"chunk"]), st.booleans(),
    ),
    st.builds(MsgSnapResp, peer, st.just(ME), term, index, st.integers(0, 8), st.booleans()),
    st.builds(MsgTimeoutNow, peer, st.just(ME), term),
    st.builds(MsgReadIndex, peer, st.just(ME), st.just(0), ctx),
    st.builds(MsgReadIndexResp, peer, st.just(ME), st.just(0), index, ctx),
)  # fmt: skip
# Entries of a MsgApp are contiguous after prev_index: a gap makes the core hang (see
# test_append_with_an_index_gap_is_refused_quickly below).
actions = st.lists(messages | st.integers(1, 25), min_size=1, max_size=40)


def drain(node: RaftNode) -> None:
    while node.has_ready():
        node.advance(node.ready())


@fuzz_settings(150)
@given(actions, st.integers(0, 2**32))
def test_core_survives_hostile_peer_messages(steps: list[Message | int], seed: int) -> None:
    node = RaftNode(
        Config(id=ME, election_tick=10, heartbeat_tick=1),
        random.Random(seed),
        bootstrap_state(ConfState.of_voters([1, 2, 3])),
    )
    drain(node)
    for step in steps:
        try:
            if isinstance(step, int):
                for _ in range(step):
                    node.tick()
            else:
                node.step(decode_message(encode_message(step)))  # what the wire delivers
            drain(node)
        except MicrotrioError:
            return  # a specific refusal; the node may be unusable afterwards, by design


def test_append_with_an_index_gap_is_refused_quickly() -> None:
    node = RaftNode(
        Config(id=ME, election_tick=10, heartbeat_tick=1),
        random.Random(1),
        bootstrap_state(ConfState.of_voters([1, 2, 3])),
    )
    drain(node)
    last = node.last_index
    hostile = MsgApp(2, ME, 2**64 - 1, 1, 1, (Entry(0, 2**64 - 1, EntryType.NORMAL, b""),), 0)
    try:
        node.step(hostile)
        drain(node)
    except MicrotrioError:
        pass
    assert node.last_index == last  # the gap entry was not taken into the log
