"""Helpers shared by the in-process cluster-flow tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import microtrio

from .conftest import Node, Recorder, make_args, start_node, wait_until


async def members(app: microtrio.App) -> dict[str, tuple[str, str]]:
    """``{name: (role, status)}`` as ``cluster list`` shows it."""
    return {m["name"]: (m["role"], m["status"]) for m in await app.cluster_members()}


async def form_cluster(
    nursery: trio.Nursery, root: Path, count: int, recorder: Recorder | None = None,
    **kwargs: Any,
) -> list[Node]:
    """``count`` members: member1 bootstraps, the others join with tokens."""
    nodes = [
        await start_node(nursery, root, f"member{i}", make_args(recorder, **kwargs))
        for i in range(1, count + 1)
    ]
    await nodes[0].app.new_cluster("member1", "127.0.0.1:0", {"k": "v"})
    for node in nodes[1:]:
        token = await nodes[0].app.new_join_token(node.name)
        await node.app.join_cluster(node.name, "127.0.0.1:0", token, {"j": "1"})
    return nodes


async def wait_roles(app: microtrio.App, expected: list[tuple[str, str]]) -> None:
    """Until ``cluster list`` on ``app`` shows exactly these (role, status) pairs."""

    async def done() -> bool:
        return sorted((await members(app)).values()) == sorted(expected)

    await wait_until(done)


async def leader_of(nodes: list[Node]) -> Node:
    """The member whose Raft node leads (in-process daemons only)."""
    while True:
        for node in nodes:
            daemon = node.app.daemon
            cluster = daemon.cluster if daemon is not None else None
            if cluster is not None and cluster.is_leader():
                return node
        await trio.sleep(0.05)
