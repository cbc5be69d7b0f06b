"""Five members: 3 voters and 2 stand-bys; killing a voter promotes a stand-by within a
few heartbeat intervals and the cluster keeps accepting writes; the dead member is removed
only with force (PostRemove(force) on the leader, then on every remaining member)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

import microtrio

from ._flows import form_cluster, leader_of, members, wait_roles
from .conftest import CEILING, HEARTBEAT, Recorder, wait_until


async def test_killed_voter_is_replaced_by_a_standby(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            recorder = Recorder()
            nodes = await form_cluster(nursery, tmp_path, 5, recorder)
            leader = await leader_of(nodes)
            await wait_roles(leader.app, [("voter", "ONLINE")] * 3
                             + [("stand-by", "ONLINE")] * 2)
            await leader.app.sql("CREATE TABLE w (v INTEGER)")

            found = await members(leader.app)
            victim = next(n for n in nodes
                          if n is not leader and found[n.name][0] == "voter")
            standbys = {n for n, (role, _) in found.items() if role == "stand-by"}
            victim.scope.cancel()
            killed_at = trio.current_time()

            async def replaced() -> bool:
                now = await members(leader.app)
                voters = {n for n, (role, status) in now.items()
                          if role == "voter" and status == "ONLINE"}
                return len(voters) == 3 and bool(voters & standbys)

            await wait_until(replaced)
            # Bound: a few heartbeat rounds (and the ready probes of cluster list).
            assert trio.current_time() - killed_at < 40 * HEARTBEAT + 10
            now = await members(leader.app)
            assert now[victim.name][1] == "UNREACHABLE"
            for i, node in enumerate(n for n in nodes if n is not victim):
                await node.app.sql(f"INSERT INTO w VALUES ({i})")
            result = await leader.app.sql("SELECT count(*) FROM w")
            assert isinstance(result, dict)
            assert result["Results"][0]["rows"] == [[4]]

            # The dead member cannot be removed without force (its PreRemove cannot run;
            # nothing changes); with force it goes, and PostRemove(force) runs on the leader,
            # then on every remaining member.
            async def demoted() -> bool:  # the dead voter is demoted in a later round
                return (await members(leader.app))[victim.name][0] != "voter"

            await wait_until(demoted)
            start = len(recorder.calls)
            async with leader.app.local_client() as client:
                with pytest.raises(microtrio.MicrotrioError):
                    await client.remove_member(victim.name)
                assert victim.name in await members(leader.app)
                await client.remove_member(victim.name, force=True)
            assert victim.name not in await members(leader.app)
            hooks = [(n, h, a) for n, h, a in recorder.calls[start:]
                     if h in ("pre-remove", "post-remove")]
            alive = [n.name for n in nodes if n is not victim and n is not leader]
            assert hooks[0] == (leader.name, "post-remove", (True,))
            assert sorted(n for n, _, _ in hooks[1:]) == sorted(alive)
            assert all(h == "post-remove" and a == (True,) for _, h, a in hooks)
            await wait_roles(leader.app, [("voter", "ONLINE")] * 3 + [("stand-by", "ONLINE")])

            # A graceful stop of the leader hands leadership over first.
            caplog.set_level(logging.INFO, logger="microtrio.cluster")
            await leader.app.shutdown()
            assert "leadership handed over" in caplog.text
            rest = [n for n in nodes if n is not victim and n is not leader]
            await rest[0].app.sql("INSERT INTO w VALUES (9)")
        nursery.cancel_scope.cancel()
