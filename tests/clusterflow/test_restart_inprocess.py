"""Every member of a three-member cluster stopped, then started again together: each waits
for a Raft leader before opening its database, and the cluster comes back with its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import microtrio

from ._flows import form_cluster, wait_roles
from .conftest import CEILING, Node, make_args, run_node, wait_until


async def test_whole_cluster_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            nodes = await form_cluster(nursery, tmp_path, 3)
            await wait_roles(nodes[0].app, [("voter", "ONLINE")] * 3)
            await nodes[1].app.sql("CREATE TABLE t (v INTEGER)")
            await nodes[2].app.sql("INSERT INTO t VALUES (7)")

            for node in nodes:
                await node.app.shutdown()
                await node.done.wait()
            again = [
                Node(
                    n.name,
                    n.state_dir,
                    microtrio.App(n.state_dir, args=make_args()),
                    trio.CancelScope(),
                )
                for n in nodes
            ]
            for node in again:
                nursery.start_soon(run_node, node)

            async def ready(node: Node) -> bool:
                try:
                    await node.app.ready(timeout=0.5, poll_interval=0.1)
                except (microtrio.MicrotrioError, trio.TooSlowError, OSError):
                    return False
                return True

            for node in again:
                await wait_until(lambda node=node: ready(node))

            await wait_roles(again[0].app, [("voter", "ONLINE")] * 3)
            for node in again:
                result: Any = await node.app.sql("SELECT v FROM t")
                assert result["Results"][0]["rows"] == [[7]]
        nursery.cancel_scope.cancel()
