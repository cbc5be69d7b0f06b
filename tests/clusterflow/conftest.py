"""Fixtures of the cluster-flow tests: in-process members of one cluster (real daemons,
real TLS on 127.0.0.1 port 0, Raft-replicated databases) with a hook recorder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import microtrio

VERSION = "1.0.0"
CEILING = 120.0
#: Short heartbeats so that roles converge within a test.
HEARTBEAT = 0.5


@dataclass
class Recorder:
    """Records every hook call as ``(member, hook, args)`` in order."""

    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    def of(self, member: str) -> list[tuple[str, Any]]:
        return [(hook, args) for name, hook, args in self.calls if name == member]

    def hooks(self) -> microtrio.Hooks:
        def record(hook: str) -> Any:
            async def fn(state: microtrio.State, *args: Any) -> None:
                self.calls.append((state.name, hook, _plain(args)))

            return fn

        return microtrio.Hooks(
            pre_init=record("pre-init"),
            post_bootstrap=record("post-bootstrap"),
            pre_join=record("pre-join"),
            post_join=record("post-join"),
            on_start=record("on-start"),
            on_new_member=record("on-new-member"),
            pre_remove=record("pre-remove"),
            post_remove=record("post-remove"),
            on_heartbeat=record("on-heartbeat"),
            on_daemon_config_update=record("on-daemon-config-update"),
        )


def _plain(args: tuple[Any, ...]) -> Any:
    out: list[Any] = []
    for arg in args:
        if isinstance(arg, Mapping):
            out.append({k: getattr(v, "__dict__", None) or _slots(v) for k, v in arg.items()})
        elif hasattr(arg, "to_dict") and hasattr(arg, "servers"):  # a DaemonConfig
            out.append(arg.to_dict())
        elif hasattr(arg, "name") and hasattr(arg, "address"):
            out.append(arg.name)
        else:
            out.append(arg)
    return tuple(out)


def _slots(value: Any) -> Any:
    slots = getattr(type(value), "__slots__", None)
    if slots:
        return tuple(getattr(value, s) for s in slots)
    return value


def make_args(recorder: Recorder | None = None, **kwargs: Any) -> microtrio.DaemonArgs:
    kwargs.setdefault("drain_timeout", 3.0)
    kwargs.setdefault("hook_timeout", 10.0)
    kwargs.setdefault("heartbeat_interval", HEARTBEAT)
    hooks = recorder.hooks() if recorder is not None else None
    return microtrio.DaemonArgs(version=VERSION, hooks=hooks, **kwargs)


@dataclass
class Node:
    name: str
    state_dir: Path
    app: microtrio.App
    scope: trio.CancelScope
    #: Set once the daemon's run has returned (its state directory is free again).
    done: trio.Event = field(default_factory=trio.Event)


async def start_node(
    nursery: trio.Nursery, root: Path, name: str, args: microtrio.DaemonArgs
) -> Node:
    """A daemon in its own cancel scope (cancel it to kill the member)."""
    node = Node(name, root / name, microtrio.App(root / name, args=args), trio.CancelScope())
    await nursery.start(run_node, node)
    return node


async def run_node(
    node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        with node.scope:
            await node.app.run(task_status=task_status)
    finally:
        node.done.set()


async def wait_until(predicate: Any, *, interval: float = 0.1) -> None:
    """Poll an async predicate until it holds (bounded by the caller's fail_after)."""
    while not await predicate():  # noqa: ASYNC110 - a remote condition, polled
        await trio.sleep(interval)


#: Killing members (cancel scopes) and stopping the test cancel heartbeat requests whose
#: body httpx is still sending; trio then finalises httpx's body generator itself and warns.
#: A killed member's half-open connections are likewise left to the garbage collector. That
#: is what a crash-stop looks like in one process; every other warning stays an error.
KILLED_MEMBER_LEFTOVERS = [
    pytest.mark.filterwarnings(
        "ignore:Async generator 'httpx._content.ByteStream.__aiter__':ResourceWarning"
    ),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/clusterflow/" in item.nodeid:
            for mark in KILLED_MEMBER_LEFTOVERS:
                item.add_marker(mark)
