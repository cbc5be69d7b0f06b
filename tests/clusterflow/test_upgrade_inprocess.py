"""A rolling upgrade through real daemons: members restarted one by one with an extra
schema update and API extension wait ("Database is waiting for an upgrade") and show as
UPGRADING / NEEDS UPGRADE in ``cluster list`` until the last member is upgraded; then the
cluster runs the new version and no write is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import microtrio

from ._flows import form_cluster, members
from .conftest import CEILING, Node, make_args, run_node, wait_until

V1 = [microtrio.SchemaUpdate("CREATE TABLE items (v INTEGER)")]
V2 = [*V1, microtrio.SchemaUpdate("CREATE TABLE notes (v TEXT)")]


def args(version: int) -> microtrio.DaemonArgs:
    if version == 1:
        return make_args(schema_updates=V1, api_extensions=["ext_a"])
    return make_args(schema_updates=V2, api_extensions=["ext_a", "ext_b"])


async def restart(nursery: trio.Nursery, node: Node) -> Node:
    """Stop ``node`` gracefully and start it again on the new version (not waiting for it
    to be ready: it may wait for the others)."""
    with trio.fail_after(30):
        await node.app.shutdown()
        await node.done.wait()
    new = Node(node.name, node.state_dir, microtrio.App(node.state_dir, args=args(2)),
               trio.CancelScope())
    nursery.start_soon(run_node, new)
    return new


async def statuses(app: microtrio.App) -> dict[str, str]:
    return {name: status for name, (_, status) in (await members(app)).items()}


async def test_rolling_upgrade(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            nodes = await form_cluster(nursery, tmp_path, 3, None,
                                       schema_updates=V1, api_extensions=["ext_a"])
            m1 = nodes[0]

            async def all_voters(app: microtrio.App) -> bool:
                found = await members(app)
                return sorted(found.values()) == [("voter", "ONLINE")] * 3

            await wait_until(lambda: all_voters(m1.app))
            await m1.app.sql("INSERT INTO items VALUES (1)")

            # member3, then member2, restart on v2 and wait for the others.
            upgraded: list[Node] = []
            for i, node in ((2, nodes[2]), (1, nodes[1])):
                new = await restart(nursery, node)
                upgraded.append(new)

                async def waiting(new: Node = new) -> bool:
                    try:
                        status = await new.app.status()
                    except microtrio.MicrotrioError:
                        return False
                    return status["ready"] is False and new.app.daemon is not None and \
                        str(new.app.daemon.database_status()) == \
                        "Database is waiting for an upgrade"

                await wait_until(waiting)
                found = await statuses(m1.app)
                assert found[node.name] == "UPGRADING"
                assert found["member1"] == "NEEDS UPGRADE"
                await m1.app.sql(f"INSERT INTO items VALUES ({10 + i})")  # writes go on

            # The last one: everybody starts on v2.
            last = await restart(nursery, m1)

            async def ready(node: Node) -> bool:
                try:
                    await node.app.ready(timeout=0.5, poll_interval=0.1)
                except (microtrio.MicrotrioError, trio.TooSlowError):
                    return False
                return True

            for node in [last, *upgraded]:
                await wait_until(lambda node=node: ready(node))
            await wait_until(lambda: all_voters(last.app))
            for node in [last, *upgraded]:
                status = await node.app.status()
                assert "ext_b" in status["extensions"]
                result: Any = await node.app.sql("SELECT v FROM items ORDER BY v")
                assert result["Results"][0]["rows"] == [[1], [11], [12]]
            await upgraded[0].app.sql("INSERT INTO notes VALUES ('v2')")
            rows: Any = await last.app.sql("SELECT v FROM notes")
            assert rows["Results"][0]["rows"] == [["v2"]]
        nursery.cancel_scope.cancel()
