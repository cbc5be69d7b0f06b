"""ReadIndex batching in the driver: concurrent readers share heartbeat rounds, and every
read point still covers each write acknowledged before its read began."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster

from microtrio.raft import RaftNode

CEILING = 60.0


async def test_concurrent_reads_share_read_index_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [0]
    real = RaftNode.read_index

    def counting(self: RaftNode, ctx: bytes) -> None:
        requests[0] += 1
        real(self, ctx)

    monkeypatch.setattr(RaftNode, "read_index", counting)
    reads = 0
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            follower = next(m for m in cluster.running() if m is not leader)
            requests[0] = 0

            async def writer_then_readers(k: int) -> None:
                nonlocal reads
                driver = leader.repl.driver
                index, term = await driver.propose(b"")
                assert await driver.wait_entry(index, term) is True
                async with trio.open_nursery() as nursery:
                    for member in (leader, follower) * 4:

                        async def read(member: object = member) -> None:
                            nonlocal reads
                            got = await member.repl.driver.read_index()  # type: ignore[attr-defined]
                            assert got >= index, (got, index)
                            reads += 1

                        nursery.start_soon(read)

            async with trio.open_nursery() as nursery:
                for k in range(12):
                    nursery.start_soon(writer_then_readers, k)
    assert reads == 12 * 8
    assert requests[0] < reads / 2, (requests[0], reads)


async def test_one_read_index_request_in_flight_per_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers that loop (each asks again as soon as it got its read point) on a follower:
    while one request is in flight the others gather into the next batch, so requests stay
    far fewer than reads; every read point covers the writes acknowledged
    before the read began."""
    issued: list[int] = []
    real = RaftNode.read_index

    def counting(self: RaftNode, ctx: bytes) -> None:
        issued.append(self.id)
        real(self, ctx)

    monkeypatch.setattr(RaftNode, "read_index", counting)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            follower = next(m for m in cluster.running() if m is not leader)
            driver = follower.repl.driver
            reads = 0
            issued.clear()

            async def reader() -> None:
                nonlocal reads
                for _ in range(15):
                    index, term = await leader.repl.driver.propose(b"")
                    assert await leader.repl.driver.wait_entry(index, term) is True
                    got = await driver.read_index()
                    assert got >= index, (got, index)
                    reads += 1

            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(reader)
            mine = issued.count(follower.id)
            assert reads == 16 * 15
            assert mine < reads / 3, (mine, reads)


async def test_lease_reads_skip_the_heartbeat_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``lease_read`` the leader answers from its lease (no heartbeat round per read
    batch) while a quorum keeps acknowledging its heartbeats; the answers stay fresh."""
    from microtrio._replication import DriverConfig
    from microtrio.raft._readonly import ReadOnly

    rounds = [0]
    real_add = ReadOnly.add

    def counting_add(self: ReadOnly, *args: object) -> int:
        rounds[0] += 1
        return real_add(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ReadOnly, "add", counting_add)
    config = DriverConfig(tick_interval=0.05, election_tick=20, lease_read=True)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=config) as cluster:
            leader = await cluster.leader()
            driver = leader.repl.driver
            while True:  # until a quorum acknowledged a heartbeat: the lease is established
                before = rounds[0]
                await driver.read_index()
                if rounds[0] == before:
                    break
                await trio.sleep(0.05)
            rounds[0] = 0
            for _ in range(40):
                index, term = await driver.propose(b"")
                assert await driver.wait_entry(index, term) is True
                assert await driver.read_index() >= index
            assert rounds[0] < 20, rounds[0]  # most reads were answered from the lease
