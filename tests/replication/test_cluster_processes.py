"""Three replicated members as real processes on loopback; ``kill -9`` of the leader."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from microtrio._certs import generate_cert_key_pair, write_cert_key_pair
from microtrio._replication import node_id_for

CEILING = 90.0
HELPER = Path(__file__).with_name("_raft_process.py")
NAMES = ["member1", "member2", "member3"]


class Proc:
    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.buffer = b""

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some(65536)
            assert chunk, f"{self.name} exited"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        result: dict[str, Any] = json.loads(line)
        return result

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(obj).encode() + b"\n")

    async def call(self, **command: Any) -> dict[str, Any]:
        await self.send(command)
        return await self.line()


def write_pki(root: Path) -> None:
    pki = root / "pki"
    pki.mkdir(parents=True)
    cluster = generate_cert_key_pair("microtrio-cluster")
    write_cert_key_pair(pki / "cluster.crt", pki / "cluster.key", cluster)
    for name in NAMES:
        write_cert_key_pair(pki / f"{name}.crt", pki / f"{name}.key", generate_cert_key_pair(name))


async def spawn(nursery: trio.Nursery, root: Path, name: str) -> tuple[Proc, str]:
    with (root / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, str(HELPER), str(root), name, ",".join(NAMES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                check=False,
            )
        )
    proc = Proc(name, process)
    return proc, (await proc.line())["address"]


async def agreed_leader(procs: list[Proc], *, not_: int = 0) -> int:
    """The leader all of ``procs`` agree on (other than ``not_``); polls their status."""
    while True:
        leaders = {int((await p.call(op="status"))["leader"]) for p in procs}
        if len(leaders) == 1 and not leaders & {0, not_}:
            return leaders.pop()
        await trio.sleep(0.05)


async def keys(proc: Proc) -> list[int]:
    reply = await proc.call(op="read", sql="SELECT k FROM t ORDER BY k")
    assert "rows" in reply, reply
    return [row[0] for row in reply["rows"]]


async def test_kill_9_of_the_leader_process(tmp_path: Path) -> None:
    await trio.to_thread.run_sync(write_pki, tmp_path)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            started = [await spawn(nursery, tmp_path, name) for name in NAMES]
            procs = [p for p, _ in started]
            ids = {proc.name: node_id_for(proc.name) for proc in procs}
            peers = {ids[proc.name]: address for proc, address in started}
            for proc in procs:
                await proc.send({"peers": {str(k): v for k, v in peers.items()}})
            for proc in procs:
                assert await proc.line() == {"ready": True}
            assert await procs[0].call(op="exec", sql="CREATE TABLE t (k INTEGER PRIMARY KEY)")
            for k in range(9):
                reply = await procs[k % 3].call(op="exec", sql="INSERT INTO t VALUES (?)", args=[k])
                assert reply == {"ok": True}
            leader_id = await agreed_leader(procs)
            leader = next(p for p in procs if ids[p.name] == leader_id)
            leader.process.kill()  # SIGKILL: no cleanup at all
            await leader.process.wait()
            survivors = [p for p in procs if p is not leader]
            new_leader = await agreed_leader(survivors, not_=leader_id)
            assert new_leader != leader_id
            for k in range(9, 15):
                reply = await survivors[k % 2].call(
                    op="exec", sql="INSERT INTO t VALUES (?)", args=[k]
                )
                assert reply == {"ok": True}
            for proc in survivors:
                assert await keys(proc) == list(range(15))
            # the killed member restarts from its files and catches up
            restarted, address = await spawn(nursery, tmp_path, leader.name)
            peers[leader_id] = address
            for proc in survivors:
                await proc.call(op="peer", id=leader_id, address=address)
            await restarted.send({"peers": {str(k): v for k, v in peers.items()}})
            assert await restarted.line() == {"ready": True}
            assert await keys(restarted) == list(range(15))
            for proc in [*survivors, restarted]:
                proc.process.kill()
