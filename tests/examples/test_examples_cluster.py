"""The kv example on a microtrio.testing cluster: writes through every member over mutual
TLS, linearizable reads on every member, every member's database holding the same rows;
with three members, the leader is killed, a survivor keeps taking writes, and the restarted
member catches up (skips while joining is not wired into the daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _member_support import CEILING, Running

from examples.kv.service import daemon_args
from microtrio.testing import TestCluster, TestMember, open_cluster

CLUSTER_CEILING = 4 * CEILING


def running(member: TestMember) -> Running:
    return Running(member.app, member.state_dir, member.address)


async def put(member: TestMember, key: str, value: bytes) -> int:
    response = await running(member).request("PUT", f"/1.0/kv/{key}", via="tls", content=value)
    return response.status_code


async def check_kv(cluster: TestCluster) -> None:
    for k, member in enumerate(cluster):
        assert await put(member, f"k{k}", f"v{k}".encode()) == 200
    for member in cluster:  # linearizable reads see every acknowledged write
        for k in range(len(cluster)):
            got = await running(member).request("GET", f"/1.0/kv/k{k}", via="tls")
            assert got.status_code == 200 and got.content == f"v{k}".encode()
    await cluster.wait_replicated()
    expected = [(f"k{k}", f"v{k}".encode()) for k in range(len(cluster))]
    seen = await cluster.read_all("SELECT key, value FROM kv ORDER BY key")
    assert seen == {m.name: expected for m in cluster}


@pytest.mark.parametrize("size", [1, 3])
async def test_kv_on_a_test_cluster(tmp_path: Path, size: int) -> None:
    with trio.fail_after(CLUSTER_CEILING):
        async with open_cluster(size, tmp_path=tmp_path, args=daemon_args()) as cluster:
            await check_kv(cluster)
            if size > 1:
                await kill_the_leader(cluster)


async def kill_the_leader(cluster: TestCluster) -> None:
    leader = await cluster.wait_for_leader()
    await cluster.kill(leader)
    await cluster.wait_for_leader(exclude=[leader])
    survivor = next(m for m in cluster if m is not leader)
    while await put(survivor, "after", b"kill") != 200:  # noqa: ASYNC110 - election
        await trio.sleep(0.05)
    await cluster.restart(leader)
    await cluster.wait_for_leader()
    await cluster.wait_replicated()
    assert await leader.read("SELECT value FROM kv WHERE key = 'after'") == [(b"kill",)]
