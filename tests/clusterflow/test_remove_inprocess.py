"""Removal through the real daemon: a follower forwards to the leader, the removed member
resets itself in-process, the leader can remove itself, and a removed name can re-join;
``--address`` must match the member's; a follower can remove itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

import microtrio

from ._flows import form_cluster, leader_of, members, wait_roles
from .conftest import CEILING, Recorder

ONLINE_VOTER = ("voter", "ONLINE")


async def test_remove_rejoin_and_remove_the_leader(tmp_path: Path) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            nodes = await form_cluster(nursery, tmp_path, 3, recorder)
            m1, m2, m3 = nodes
            await wait_roles(m1.app, [ONLINE_VOTER] * 3)
            await m1.app.sql("CREATE TABLE kept (v INTEGER)")
            await m1.app.sql("INSERT INTO kept VALUES (1)")

            # A wrong --address is refused (the CLI, as an operator types it); nothing changes.
            address3 = {m["name"]: m["address"] for m in await m1.app.cluster_members()}[
                "member3"]
            result = await trio.run_process(
                [sys.executable, "-m", "microtrio", "--state-dir", str(m2.state_dir),
                 "cluster", "remove", "member3", "--address", "127.0.0.1:1"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode != 0
            assert f"has the address {address3}, not 127.0.0.1:1" in result.stderr.decode()
            assert set(await members(m1.app)) == {"member1", "member2", "member3"}

            # Removal asked on a member that is not the leader (with the right address):
            # forwarded to the leader.
            leader = await leader_of(nodes)
            asker = next(n for n in nodes if n is not leader and n is not m3)
            async with asker.app.local_client() as client:
                await client.remove_member("member3", address=address3)
            daemon3 = m3.app.daemon
            assert daemon3 is not None
            await daemon3.wait_reset(1)
            assert (await m3.app.status())["ready"] is False
            assert set(await members(m1.app)) == {"member1", "member2"}
            assert not (m1.state_dir / "truststore" / "member3.yaml").exists()
            assert ("pre-remove", (False,)) in recorder.of("member3")
            for name in ("member1", "member2"):
                assert ("post-remove", (False,)) in recorder.of(name)

            # Unknown names are refused; the removed member can join again.
            async with m1.app.local_client() as client:
                with pytest.raises(microtrio.MicrotrioError, match="member9"):
                    await client.remove_member("member9")
            token = await m2.app.new_join_token("member3")
            await m3.app.join_cluster("member3", "127.0.0.1:0", token)
            await wait_roles(m2.app, [ONLINE_VOTER] * 3)
            result = await m3.app.sql("SELECT v FROM kept")
            assert isinstance(result, dict)
            assert result["Results"][0]["rows"] == [[1]]

            # The leader removes itself: leadership moves first, then it is removed.
            leader = await leader_of(nodes)
            async with leader.app.local_client() as client:
                await client.remove_member(leader.name)
            daemon = leader.app.daemon
            assert daemon is not None
            await daemon.wait_reset(1 if leader is not m3 else 2)
            rest = [n for n in nodes if n is not leader]
            assert set(await members(rest[0].app)) == {n.name for n in rest}
            await rest[1].app.sql("INSERT INTO kept VALUES (2)")
            result = await rest[0].app.sql("SELECT count(*) FROM kept")
            assert isinstance(result, dict)
            assert result["Results"][0]["rows"] == [[2]]

            # A follower removes itself through its own socket: the request goes to the
            # leader, which resets the follower; the answer still reaches the caller.
            leader = await leader_of(rest)
            (follower,) = [n for n in rest if n is not leader]
            daemon = follower.app.daemon
            assert daemon is not None
            resets = daemon.reset_count
            async with follower.app.local_client() as client:
                await client.remove_member(follower.name)
            await daemon.wait_reset(resets + 1)
            assert set(await members(leader.app)) == {leader.name}
            assert (await follower.app.status())["ready"] is False
        nursery.cancel_scope.cancel()
