"""The tutorial (reference 8.3) with real processes, as a new user would run it through
the CLI: five daemons bootstrapped and joined with tokens (3 voters, 2 stand-bys, all
ONLINE), invalid names refused, an expired token refused and hidden, a member removed and
re-joined; then ``kill -9`` of a voter promotes a stand-by and writes go on; then three
members are lost for good and ``cluster edit`` on a survivor plus the tarball on the other
bring a working two-member cluster back with every committed write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from microtrio import App, MicrotrioError
from microtrio._replication import node_id_for

CEILING = 280.0
HEARTBEAT = "0.5s"
NAMES = [f"member{i}" for i in range(1, 6)]


class Member:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.state = root / name
        self.log = root / f"{name}.log"
        self.process: trio.Process | None = None
        #: In-process client of the control socket, for polling (CLI processes are slow).
        self.app = App(self.state)

    async def start(self, nursery: trio.Nursery) -> None:
        with self.log.open("ab") as log:
            self.process = await nursery.start(partial(
                trio.run_process,
                [sys.executable, "-m", "microtrio", "-v", "daemon", "--state-dir",
                 str(self.state), "--heartbeat", HEARTBEAT],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ))
        await self.app.ready(timeout=60, poll_interval=0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    async def ctl(self, *args: str, check: bool = True, stdin: bytes = b"") -> str:
        """Run ``python -m microtrio --state-dir <state> <args>``; return its stdout."""
        result = await trio.run_process(
            [sys.executable, "-m", "microtrio", "--state-dir", str(self.state), *args],
            stdin=stdin, capture_stdout=True, capture_stderr=True, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {args}: {result.stderr.decode()}")
        if not check and result.returncode == 0:
            raise AssertionError(f"{self.name} {args} succeeded: {result.stdout.decode()}")
        return (result.stdout if check else result.stderr).decode()

    async def members(self) -> list[dict[str, Any]]:
        """``cluster list`` as the CLI prints it (``-f json``)."""
        found: list[dict[str, Any]] = json.loads(await self.ctl("cluster", "list", "-f", "json"))
        return found

    async def poll_members(self) -> list[dict[str, Any]]:
        """The same list through the API (for polling)."""
        return await self.app.cluster_members()

    async def rows(self, query: str) -> str:
        return await self.ctl("sql", query)


def numbers(table: str) -> list[int]:
    """The integers of a ``sql`` result table."""
    return [int(tok) for tok in table.replace("|", " ").split() if tok.isdigit()]


def summary(members: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((m["role"], m["status"]) for m in members)


async def wait_for(
    member: Member, wanted: list[tuple[str, str]], *, cli: bool = True
) -> list[dict[str, Any]]:
    """Poll until the roles and statuses are ``wanted``; then check the CLI shows them."""
    while summary(await member.poll_members()) != sorted(wanted):  # noqa: ASYNC110
        await trio.sleep(0.2)
    found = await member.members() if cli else await member.poll_members()
    assert summary(found) == sorted(wanted)
    return found


@pytest.mark.slow  # eight daemon processes and a dozen CLI processes
async def test_tutorial_failover_and_recovery(tmp_path: Path) -> None:
    cluster = [Member(tmp_path, name) for name in NAMES]
    m1 = cluster[0]
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:  # daemons start concurrently
                for member in cluster:
                    starting.start_soon(member.start, nursery)
            # Invalid names are refused by init and by tokens (CLI once each, then the API).
            assert "Error" in await m1.ctl("init", "c/1", "127.0.0.1:0", "--bootstrap",
                                           check=False)
            for bad in ("_x", "x."):
                with pytest.raises(MicrotrioError):
                    await m1.app.new_cluster(bad, "127.0.0.1:0")
            await m1.ctl("init", "member1", "127.0.0.1:0", "--bootstrap")
            assert "Error" in await m1.ctl("tokens", "add", "_x", check=False)
            for bad in ("c/1", "x."):
                with pytest.raises(MicrotrioError):
                    await m1.app.new_join_token(bad)
            for member in cluster[1:]:
                if member is cluster[1]:
                    token = (await m1.ctl("tokens", "add", member.name)).strip()
                else:
                    token = await m1.app.new_join_token(member.name)
                await member.ctl("init", member.name, "127.0.0.1:0", "--token", token)
            found = await wait_for(m1, [("voter", "ONLINE")] * 3 + [("stand-by", "ONLINE")] * 2)
            assert sorted(m["name"] for m in found) == NAMES
            assert all(len(m["fingerprint"]) == 12 for m in found)
            # A CLI daemon owns its process: it froze its heap once ready and once its
            # database was open (full garbage collections then skip what was there).
            for member in cluster:
                text = member.log.read_text()
                assert "heap frozen (daemon ready)" in text, member.name
                assert "heap frozen (database open)" in text, member.name

            # Remove a member; a token that expired is hidden and refused; then it re-joins.
            await m1.ctl("cluster", "remove", "member2")
            m2 = cluster[1]
            await m2.app.ready(timeout=30, poll_interval=0.1)
            expired = (await m1.ctl("tokens", "add", "member2", "--expire-after", "1s")).strip()
            while "member2" in str(await m1.app.list_join_tokens()):  # noqa: ASYNC110
                await trio.sleep(0.2)
            assert "member2" not in await m1.ctl("tokens", "list")
            error = await m2.ctl("init", "member2", "127.0.0.1:0", "--token", expired,
                                 check=False)
            assert "expired" in error.lower() or "not found" in error.lower(), error
            await wait_for(m1, [("voter", "ONLINE")] * 3 + [("stand-by", "ONLINE")],
                           cli=False)
            token = await m1.app.new_join_token("member2")
            await m2.app.ready(timeout=30, poll_interval=0.1)
            await m2.ctl("init", "member2", "127.0.0.1:0", "--token", token)
            found = await wait_for(m1, [("voter", "ONLINE")] * 3 + [("stand-by", "ONLINE")] * 2,
                                   cli=False)
            await m1.app.sql("CREATE TABLE notes (n INTEGER)")
            assert "Rows affected: 1" in await cluster[4].ctl("sql", "INSERT INTO notes VALUES (4)")
            for i in range(4):  # through every member's API
                await cluster[i].app.sql(f"INSERT INTO notes VALUES ({i})")

            # kill -9 of a voter: a stand-by is promoted, writes go on.
            roles = {m["name"]: m["role"] for m in found}
            standbys = {n for n, r in roles.items() if r == "stand-by"}
            victim = next(m for m in cluster if roles[m.name] == "voter" and m is not m1)
            victim.kill()
            alive = [m for m in cluster if m is not victim]

            async def promoted() -> list[dict[str, Any]]:
                while True:
                    now = await alive[0].poll_members()
                    voters = {m["name"] for m in now
                              if m["role"] == "voter" and m["status"] == "ONLINE"}
                    if len(voters) == 3 and voters & standbys:
                        return now
                    await trio.sleep(0.3)

            found = await promoted()
            for i, member in enumerate(alive):
                await member.app.sql(f"INSERT INTO notes VALUES ({10 + i})")

            # Quorum loss: keep two voters, lose everyone else for good.
            voters = [m for m in alive if any(f["name"] == m.name and f["role"] == "voter"
                                               for f in found)]
            keep = voters[:2]
            addresses = {f["name"]: f["address"] for f in found}
            for member in cluster:
                if member not in keep and member is not victim:
                    member.kill()
            total = 5 + len(alive)
            for member in keep:  # both have applied everything committed (linearizable read)
                assert numbers(await member.rows("SELECT count(*) FROM notes")) == [total]
            await keep[0].ctl("shutdown")
            await keep[1].app.shutdown()
        # Every daemon has exited; recover on the first survivor.
        a, b = keep
        edited = [
            {"id": node_id_for(name), "name": name, "address": addresses[name],
             "role": "voter" if name in (a.name, b.name) else "spare"}
            for name in NAMES
        ]
        out = await a.ctl("cluster", "edit", stdin=yaml.safe_dump(edited).encode())
        assert "recovery_db.tar.gz" in out
        shutil.copy(a.state / "recovery_db.tar.gz", b.state / "recovery_db.tar.gz")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start, nursery)
            await b.start(nursery)
            await a.app.ready(timeout=60, poll_interval=0.1)
            assert not (b.state / "recovery_db.tar.gz").exists()
            await b.app.sql("INSERT INTO notes VALUES (99)")
            text = await a.rows("SELECT n FROM notes ORDER BY n")
            assert numbers(text) == [0, 1, 2, 3, 4, *range(10, 10 + len(alive)), 99]
            for member in (a, b):
                await member.app.shutdown()
