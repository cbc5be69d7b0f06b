"""A join that fails on the joiner (its PreJoin hook) is rolled back everywhere: the leader
removes the joiner (forced), the joiner runs PreRemove(force) and resets itself in-process;
no row, truststore entry or Raft member is left, and the member can join again later."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import microtrio
from microtrio._replication import node_id_for

from ._flows import members
from .conftest import CEILING, make_args, start_node


async def test_failed_join_is_rolled_back(tmp_path: Path) -> None:
    calls: list[tuple[str, object]] = []
    fail = [True]

    async def pre_join(state: microtrio.State, config: object) -> None:
        calls.append(("pre-join", config))
        if fail[0]:
            raise microtrio.MicrotrioError("the application refuses to join")

    async def pre_remove(state: microtrio.State, force: bool) -> None:
        calls.append(("pre-remove", force))

    hooks = microtrio.Hooks(pre_join=pre_join, pre_remove=pre_remove)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            m1 = await start_node(nursery, tmp_path, "member1", make_args())
            args = microtrio.DaemonArgs(version="1.0.0", hooks=hooks, drain_timeout=3.0,
                                        heartbeat_interval=0.5)
            m2 = await start_node(nursery, tmp_path, "member2", args)
            await m1.app.new_cluster("member1", "127.0.0.1:0")
            token = await m1.app.new_join_token("member2")
            with pytest.raises(microtrio.MicrotrioError, match="refuses to join"):
                await m2.app.join_cluster("member2", "127.0.0.1:0", token)
            assert ("pre-remove", True) in calls
            assert (await m2.app.status())["ready"] is False
            assert not (m2.state_dir / "daemon.yaml").exists()
            assert set(await members(m1.app)) == {"member1"}
            assert not (m1.state_dir / "truststore" / "member2.yaml").exists()
            daemon = m1.app.daemon
            assert daemon is not None and daemon.cluster is not None
            conf = await daemon.cluster.membership.configuration()
            assert node_id_for("member2") not in conf

            fail[0] = False
            token = await m1.app.new_join_token("member2")
            await m2.app.join_cluster("member2", "127.0.0.1:0", token)
            assert set(await members(m1.app)) == {"member1", "member2"}
        nursery.cancel_scope.cancel()
