"""The Raft driver on its own: the wire codec of forwarded proposals, node ids, and a
single-member driver over real storage with a recording state machine (apply order,
restart without re-applying, snapshots and restore, read index, stop)."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from microtrio._errors import UnavailableError
from microtrio._replication import (
    WIRE_CODEC,
    AsyncLogStore,
    DriverConfig,
    LogStore,
    RaftDriver,
    RaftReplication,
    Transport,
    Wire,
    node_id_for,
)
from microtrio._replication._wire import (
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    decode_wire,
    encode_wire,
)
from microtrio.raft import CodecError, ConfState, MsgHeartbeat, StateRole

CEILING = 20.0
FAST = DriverConfig(tick_interval=0.01, election_tick=5, snapshot_threshold=1000)


# -- wire codec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        ForwardPropose(1, 2, 7, b"payload \x00\xf0"),
        ForwardPropose(1, 2, 0, b""),
        ForwardResult(2, 1, 7, ForwardStatus.OK, 42, 3, 0),
        ForwardResult(2, 1, 8, ForwardStatus.NOT_LEADER, leader=5),
        ForwardResult(2, 1, 9, ForwardStatus.DROPPED, leader=2),
        MsgHeartbeat(1, 2, 3, commit=4, read_round=5),
    ],
)
def test_wire_codec_round_trips(msg: Wire) -> None:
    assert decode_wire(encode_wire(msg)) == msg
    assert WIRE_CODEC.decode(WIRE_CODEC.encode(msg)) == msg


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xf0",
        b"\xf0\x01" + b"\x00" * 10,  # truncated header
        encode_wire(ForwardResult(2, 1, 7, ForwardStatus.OK, 1, 1))[:-1],  # short body
        encode_wire(ForwardResult(2, 1, 7, ForwardStatus.OK, 1, 1)) + b"x",  # long body
        b"\xf0\x09" + b"\x00" * 24,  # unknown kind
        b"\x07garbage",  # not a raft message either
    ],
)
def test_wire_codec_refuses_bad_input(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_wire(data)


def test_unknown_forward_status_is_refused() -> None:
    good = bytearray(encode_wire(ForwardResult(2, 1, 7, ForwardStatus.OK, 1, 1)))
    good[26] = 9  # the status byte follows the 26-byte header
    with pytest.raises(CodecError):
        decode_wire(bytes(good))


def test_node_ids_are_stable_positive_63_bit_and_distinct() -> None:
    ids = {node_id_for(f"member{k}") for k in range(1000)}
    assert len(ids) == 1000
    assert all(0 < i < 1 << 63 for i in ids)
    assert node_id_for("member1") == node_id_for("member1")


# -- a single-member driver ---------------------------------------------------------------


@dataclass(frozen=True)
class Snap:
    index: int
    data: bytes


class RecordingStateMachine:
    """Applies by recording; a snapshot is the record itself (``index:...``)."""

    def __init__(self) -> None:
        self.applied_index = 0
        self.applied: list[tuple[int, bytes | None, int]] = []
        self.restored: list[int] = []

    async def apply(self, index: int, payload: bytes | None, *, term: int = 0) -> None:
        assert index == self.applied_index + 1, f"apply {index} after {self.applied_index}"
        self.applied.append((index, payload, term))
        self.applied_index = index
        await trio.lowlevel.checkpoint()

    async def snapshot(self) -> Snap:
        await trio.lowlevel.checkpoint()
        return Snap(self.applied_index, f"{self.applied_index}:".encode())

    async def restore(self, data: bytes) -> None:
        self.applied_index = int(data.split(b":")[0])
        self.restored.append(self.applied_index)
        await trio.lowlevel.checkpoint()


NODE = 11


@asynccontextmanager
async def running_driver(
    directory: Path, sm: RecordingStateMachine, config: DriverConfig = FAST
) -> AsyncIterator[RaftDriver]:
    transport = Transport[Wire](
        NODE,
        codec=WIRE_CODEC,
        ssl_context=ssl.create_default_context(),
        is_trusted=lambda der: False,
    )
    store = AsyncLogStore(LogStore(directory))
    driver = RaftDriver(
        NODE,
        store=store,
        state_machine=sm,
        transport=transport,
        config=config,
        bootstrap=ConfState.of_voters([NODE]),
        rng=random.Random(1),
        name="solo",
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            await driver.wait_leader()
            yield driver
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


async def test_single_member_applies_in_order_and_resolves_commit_outcomes(
    tmp_path: Path,
) -> None:
    sm = RecordingStateMachine()
    with trio.fail_after(CEILING):
        async with running_driver(tmp_path, sm) as driver:
            assert driver.is_leader and driver.role is StateRole.LEADER
            index, term = await driver.propose(b"one")
            assert await driver.wait_entry(index, term) is True
            assert await driver.wait_entry(index, term + 1) is False  # someone else's term
            more = [await driver.propose(f"n{k}".encode()) for k in range(5)]
            for i, t in more:
                assert await driver.wait_entry(i, t) is True
            read = await driver.read_index()
            assert read >= more[-1][0]
            status = await driver.status()
            assert status.commit >= more[-1][0] and status.conf.voters == {NODE}
    payloads = [p for _, p, _ in sm.applied if p]
    assert payloads == [b"one", b"n0", b"n1", b"n2", b"n3", b"n4"]
    # configuration (index 1) and no-op entries advance the index with no payload
    assert sm.applied[0][:2] == (1, None)
    assert [i for i, _, _ in sm.applied] == list(range(1, len(sm.applied) + 1))


async def test_restart_resumes_after_the_applied_index(tmp_path: Path) -> None:
    sm = RecordingStateMachine()
    with trio.fail_after(CEILING):
        async with running_driver(tmp_path, sm) as driver:
            for k in range(3):
                index, term = await driver.propose(b"x%d" % k)
                assert await driver.wait_entry(index, term)
        before = list(sm.applied)
        async with running_driver(tmp_path, sm) as driver:
            index, term = await driver.propose(b"after restart")
            assert await driver.wait_entry(index, term)
    # nothing applied twice, the new entry follows in a new term
    indexes = [i for i, _, _ in sm.applied]
    assert indexes == sorted(set(indexes))
    assert sm.applied[: len(before)] == before
    assert sm.applied[-1][1] == b"after restart"
    assert sm.applied[-1][2] > before[-1][2]


async def test_a_fresh_state_machine_is_restored_from_the_snapshot(tmp_path: Path) -> None:
    config = DriverConfig(
        tick_interval=0.01, election_tick=5, snapshot_threshold=5, snapshot_trailing=2
    )
    sm = RecordingStateMachine()
    with trio.fail_after(CEILING):
        async with running_driver(tmp_path, sm, config) as driver:
            for k in range(12):
                index, term = await driver.propose(b"e%d" % k)
                assert await driver.wait_entry(index, term)
        assert await trio.to_thread.run_sync(lambda: list(tmp_path.glob("snapshot-*")))
        fresh = RecordingStateMachine()  # e.g. the database file was lost
        async with running_driver(tmp_path, fresh, config) as driver:
            assert fresh.restored and fresh.restored[0] >= 5
            index, term = await driver.propose(b"last")
            assert await driver.wait_entry(index, term)
            assert fresh.applied_index == index == sm.applied_index + 2  # + no-op + "last"


async def test_a_stopped_driver_refuses_requests_and_releases_waiters(tmp_path: Path) -> None:
    sm = RecordingStateMachine()
    outcome: list[bool | None] = []
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as waiters:
            async with running_driver(tmp_path, sm) as driver:

                async def wait_far() -> None:
                    outcome.append(await driver.wait_entry(10_000, 1))

                waiters.start_soon(wait_far)
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []
        # the driver stopped: the waiter was released with "cannot tell"
        assert outcome == [None]
        assert not driver.running
        with pytest.raises(UnavailableError):
            await driver.propose(b"late")
        with pytest.raises(UnavailableError):
            await driver.wait_changed()


async def test_replication_follows_member_addresses(tmp_path: Path) -> None:
    replication = RaftReplication(
        "solo",
        "127.0.0.1:1",
        directory=tmp_path / "raft",
        ssl_context=ssl.create_default_context(),
        is_trusted=lambda der: False,
    )
    replication.committer_factory(RecordingStateMachine())
    answers: list[dict[int, str] | Exception] = [
        {5: "127.0.0.1:5", replication.id: "127.0.0.1:9"},
        UnavailableError("database not open"),  # skipped, the task keeps going
        {5: "127.0.0.1:55", 6: "127.0.0.1:6"},
    ]
    seen = trio.Event()

    async def fetch() -> dict[int, str]:
        answer = answers.pop(0)
        if not answers:
            seen.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(replication.follow_addresses, fetch, interval=0.01))
            await seen.wait()
            nursery.cancel_scope.cancel()
    assert replication.transport.peers() == {5: "127.0.0.1:55", 6: "127.0.0.1:6"}
    assert replication.driver.address_of(replication.id) == "127.0.0.1:1"  # own: unchanged
