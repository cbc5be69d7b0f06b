"""Three real daemon processes (``python -m microtrio daemon``) on loopback, joined with
tokens; ``kill -9`` of the Raft leader's process; writes continue and nothing acknowledged is
lost; the killed daemon restarts from its state directory and catches up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from microtrio import App
from microtrio._replication import node_id_for

CEILING = 120.0
NAMES = ("member1", "member2", "member3")
# "leader is now 5431..." or, once the member knows the names, "leader is now member2 (5431...)"
LEADER_LINE = re.compile(rb"(member\d): leader is now (?:\S+ \()?(\d+)")


class Daemon:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.id = node_id_for(name)
        self.state = root / name
        self.log = root / f"{name}.log"
        self.app = App(self.state)
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.process = await nursery.start(
                partial(
                    trio.run_process,
                    [
                        sys.executable,
                        "-m",
                        "microtrio",
                        "-v",
                        "daemon",
                        "--state-dir",
                        str(self.state),
                        "--heartbeat",
                        "1s",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    check=False,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
        await self.app.ready(timeout=30, poll_interval=0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL

    def believed_leader(self) -> int:
        """The last leader this daemon logged (its driver logs every change)."""
        found = LEADER_LINE.findall(self.log.read_bytes())
        return int(found[-1][1]) if found else 0

    async def sql(self, query: str) -> dict[str, Any]:
        result = await self.app.sql(query)
        assert isinstance(result, dict), result
        return result


async def rows(daemon: Daemon, query: str) -> list[list[Any]]:
    result = await daemon.sql(query)
    (item,) = result["Results"]
    return list(item["rows"])


async def agreed_leader(daemons: list[Daemon], *, not_: int = 0) -> Daemon:
    while True:
        ids = {await trio.to_thread.run_sync(d.believed_leader) for d in daemons}
        if len(ids) == 1 and not ids & {0, not_}:
            (leader,) = ids
            found = [d for d in daemons if d.id == leader]
            if found:
                return found[0]
        await trio.sleep(0.1)


async def voters(daemon: Daemon) -> int:
    return sum(1 for m in await daemon.app.cluster_members() if m.get("role") == "voter")


async def join_all(daemons: list[Daemon]) -> None:
    """Bootstrap the first daemon and join the others with tokens."""
    first = daemons[0]
    await first.app.new_cluster(first.name, "127.0.0.1:0")
    for daemon in daemons[1:]:
        token = await first.app.new_join_token(daemon.name)
        await daemon.app.join_cluster(daemon.name, "127.0.0.1:0", token)


async def kill_the_leader_and_check(nursery: trio.Nursery, daemons: list[Daemon]) -> None:
    first = daemons[0]
    while await voters(first) < 3:  # noqa: ASYNC110 - heartbeats promote the joiners
        await trio.sleep(0.2)
    await first.sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    for k, daemon in enumerate(daemons * 2):
        await daemon.sql(f"INSERT INTO t VALUES ({k})")

    leader = await agreed_leader(daemons)
    leader.kill()
    assert leader.process is not None
    await leader.process.wait()
    survivors = [d for d in daemons if d is not leader]
    await agreed_leader(survivors, not_=leader.id)
    for k, daemon in enumerate(survivors * 2, start=6):
        await daemon.sql(f"INSERT INTO t VALUES ({k})")
    for daemon in survivors:
        assert await rows(daemon, "SELECT k FROM t ORDER BY k") == [[k] for k in range(10)]

    await leader.start(nursery)  # from its state directory
    assert await rows(leader, "SELECT k FROM t ORDER BY k") == [[k] for k in range(10)]


async def test_three_daemons_survive_kill_9_of_the_leader(tmp_path: Path) -> None:
    daemons = [Daemon(tmp_path, name) for name in NAMES]
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            try:
                for daemon in daemons:
                    await daemon.start(nursery)
                await join_all(daemons)
                await kill_the_leader_and_check(nursery, daemons)
            finally:
                for daemon in daemons:
                    daemon.kill()
