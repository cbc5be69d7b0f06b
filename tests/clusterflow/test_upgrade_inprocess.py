"""A rolling upgrade through real daemons: members restarted one by one with an extra
schema update and API extension wait ("Database is waiting for an upgrade") and show as
UPGRADING / NEEDS UPGRADE in ``cluster list`` until the last member is upgraded; then the
cluster runs the new version and no write is lost. The second member is upgraded because
the leader's heartbeat made it run ``SCHEMA_UPDATE`` (reference 6.6); the last one's
``PATCH /core/internal/database`` wakes the waiting members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import microtrio
from microtrio._cluster._upgrade import UPGRADE_RETRY_SECONDS

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


async def shows(node: Node, expected: dict[str, str]) -> bool:
    """``cluster list`` on ``node`` shows exactly these statuses (polled: a probe that
    times out on a loaded machine shows UNREACHABLE for a moment)."""
    return await statuses(node.app) == expected


def _updates(log: Path) -> list[tuple[str, str]]:
    """``(member, state dir)`` of every ``SCHEMA_UPDATE`` run so far."""
    if not log.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]  # type: ignore[misc]


async def test_rolling_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The auto-update hook (reference 6.6): a script that records which member ran it.
    log = tmp_path / "updates.log"
    script = tmp_path / "schema-update.sh"
    script.write_text(f'#!/bin/sh\necho "$MICROTRIO_MEMBER $STATE_DIR" >> {log}\n')
    script.chmod(0o755)
    monkeypatch.setenv("SCHEMA_UPDATE", str(script))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING * 2):
            nodes = await form_cluster(nursery, tmp_path, 3, None,
                                       schema_updates=V1, api_extensions=["ext_a"])
            by_name = {n.name: n for n in nodes}

            async def all_voters(app: microtrio.App) -> bool:
                found = await members(app)
                return sorted(found.values()) == [("voter", "ONLINE")] * 3

            await wait_until(lambda: all_voters(nodes[0].app))
            for node in nodes:  # no random 0-29 s delay in a test
                daemon = node.app.daemon
                assert daemon is not None and daemon.cluster is not None
                daemon.cluster.trigger.max_delay = 0
            await nodes[0].app.sql("INSERT INTO items VALUES (1)")
            assert _updates(log) == []  # nobody is behind yet

            async def waiting(new: Node) -> bool:
                try:
                    status = await new.app.status()
                except microtrio.MicrotrioError:
                    return False
                return status["ready"] is False and new.app.daemon is not None and \
                    str(new.app.daemon.database_status()) == \
                    "Database is waiting for an upgrade"

            # The operator upgrades member3: it waits for the others.
            upgraded = [await restart(nursery, by_name["member3"])]
            await wait_until(lambda: waiting(upgraded[0]))
            old = [by_name["member1"], by_name["member2"]]
            await wait_until(lambda: shows(old[0], {
                "member3": "UPGRADING", "member1": "NEEDS UPGRADE", "member2": "NEEDS UPGRADE"}))
            await old[0].app.sql("INSERT INTO items VALUES (11)")  # writes go on

            # The leader's heartbeats tell the old follower that the cluster's schema is
            # ahead: SCHEMA_UPDATE runs there, with its name and state directory; "the
            # script" then upgrades that member.
            async def ran() -> bool:
                return bool(_updates(log))

            await wait_until(ran)
            name, state_dir = _updates(log)[0]
            assert name in ("member1", "member2") and state_dir == str(by_name[name].state_dir)
            upgraded.append(await restart(nursery, by_name[name]))
            await wait_until(lambda: waiting(upgraded[1]))
            (left,) = [n for n in old if n.name != name]
            await wait_until(lambda: shows(left, {
                "member3": "UPGRADING", name: "UPGRADING", left.name: "NEEDS UPGRADE"}))
            await left.app.sql("INSERT INTO items VALUES (12)")
            assert {n for n, _ in _updates(log)} == {name}  # upgraded members never run it

            # The last one: once it runs v2 it notifies the others (PATCH
            # /core/internal/database), which wakes them at once rather than at their
            # next 30 s check.
            woken: list[str] = []
            for node in upgraded:
                daemon = node.app.daemon
                assert daemon is not None
                wake = daemon.notify_upgrade

                def notify(wake: Any = wake, name: str = node.name) -> None:
                    woken.append(name)
                    wake()

                daemon.notify_upgrade = notify  # type: ignore[method-assign]
            last = await restart(nursery, left)

            async def ready(node: Node) -> bool:
                try:
                    await node.app.ready(timeout=0.5, poll_interval=0.1)
                except (microtrio.MicrotrioError, trio.TooSlowError):
                    return False
                return True

            await wait_until(lambda: ready(last))
            with trio.fail_after(UPGRADE_RETRY_SECONDS - 5):
                for node in upgraded:
                    await wait_until(lambda node=node: ready(node))
            assert set(woken) == {"member3", name}
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
