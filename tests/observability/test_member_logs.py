"""Every log record a member's tasks emit carries that member's name (``record.member``, set by
:class:`microtrio.MemberFilter` from the context the daemon opens), with three members in one
``trio.run``: Raft driver, transport and core, heartbeats, listeners, database and the rest;
and a daemon run by the CLI with ``--log-format json`` writes one parseable object a line."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from _cluster_support import KILLED_MEMBER_LEFTOVERS, write_retrying

from microtrio import JsonFormatter, MemberFilter, State
from microtrio.testing import open_cluster

CEILING = 150.0

#: Killing members and stopping the cluster cancel heartbeat requests in flight.
pytestmark = KILLED_MEMBER_LEFTOVERS

#: A message that names its member first ("member2: leader is now ...").
_PREFIX = re.compile(r"^(member\d): ")


class _Records(logging.Handler):
    """Keeps every record, after :class:`MemberFilter` (as a host application's handler)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(MemberFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger("microtrio")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_every_record_of_a_member_names_it(tmp_path: Path, records: _Records) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(3, tmp_path=tmp_path, heartbeat_interval=0.2) as cluster:
            names = {m.name for m in cluster}
            leader = await cluster.wait_for_leader()
            first_leader = leader.name
            await write_retrying(cluster[1], "CREATE TABLE t (k INTEGER PRIMARY KEY)")  # forwarded
            for k in range(5):
                await write_retrying(cluster[k % 3], f"INSERT INTO t VALUES ({k})")
            await cluster.wait_replicated()
            await cluster.kill(leader)  # elections, reconnects, a restart from disk
            await cluster.wait_for_leader(exclude=[leader])
            await cluster.restart(leader)
            await cluster.wait_replicated()
    # the test's own task (the test kit forming the cluster) belongs to no member; a
    # member not initialised yet is named after the host (microcluster's default name)
    ours = [r for r in records.records if not r.name.startswith("microtrio.testing")]
    assert len(ours) > 100, f"only {len(ours)} records"
    anonymous = [
        f"{r.name} {r.filename}:{r.lineno} [{r.threadName}]: {r.getMessage()}"
        for r in ours
        if getattr(r, "member", None) not in names | {State.default_name()}
    ]
    assert not anonymous, "records without their member:\n" + "\n".join(anonymous[:40])
    # a line that names a member was logged by that member's own task or thread
    wrong = [
        f"[{r.member}] {r.name}: {r.getMessage()}"  # type: ignore[attr-defined]
        for r in ours
        if (m := _PREFIX.match(r.getMessage())) and m.group(1) != r.member  # type: ignore[attr-defined]
    ]
    assert not wrong, "records attributed to another member:\n" + "\n".join(wrong[:40])
    # the Raft shell names its peers (node ids mapped to member names by the daemon)
    leaders = [r.getMessage() for r in ours if "leader is now member" in r.getMessage()]
    assert any(re.search(r"leader is now member\d \(\d+\) \(term \d+\)", m) for m in leaders)
    # every member's components log under it: Raft driver, transport and core, heartbeats,
    # listeners, database, daemon; and worker threads (storage, database) inherit it too
    wanted = {
        "microtrio.replication.driver",
        "microtrio.replication.transport",
        "microtrio.replication.storage",
        "microtrio.raft",
        "microtrio.api",
        "microtrio.db",
        "microtrio.daemon",
    }
    for name in sorted(names):
        seen = {r.name for r in ours if r.member == name}  # type: ignore[attr-defined]
        # heartbeat rounds and admissions run on the leader (the first one: member1)
        expected = wanted | ({"microtrio.cluster"} if name == first_leader else set())
        assert expected <= seen, f"{name}: no records from {sorted(expected - seen)}"
    threads = {r.member for r in ours if r.threadName != "MainThread"}  # type: ignore[attr-defined]
    assert threads - {State.default_name()} == names, f"worker-thread records: {threads}"


def test_json_formatter_writes_one_object_per_record() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("microtrio.x").makeRecord(
            "microtrio.x", logging.ERROR, __file__, 1, "a %s line\nwith %d", ("json", 2),
            sys.exc_info(),
        )  # fmt: skip
    record.member = "m1"
    text = formatter.format(record)
    assert "\n" not in text
    data = json.loads(text)
    assert data["level"] == "ERROR" and data["logger"] == "microtrio.x"
    assert data["member"] == "m1" and data["message"] == "a json line\nwith 2"
    assert "ValueError: boom" in data["exc_info"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert set(data) == {"time", "level", "logger", "member", "message", "exc_info"}


async def test_cli_daemon_writes_json_lines_with_the_member(tmp_path: Path) -> None:
    """``python -m microtrio daemon --log-format json -v``: bootstrap it, stop it; every
    stderr line is a JSON object, and the member's lines name it."""
    state = tmp_path / "m1"
    env = {**os.environ, "STATE_DIR": str(state), "PYTHONDONTWRITEBYTECODE": "1"}
    cli = [sys.executable, "-m", "microtrio"]
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(
                partial(
                    trio.run_process,
                    [*cli, "daemon", "--log-format", "json", "-v", "--heartbeat", "1s"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                    check=False,
                )
            )
            stderr: list[bytes] = []

            async def collect() -> None:
                assert daemon.stderr is not None
                async for chunk in daemon.stderr:
                    stderr.append(chunk)

            nursery.start_soon(collect)
            await trio.run_process([*cli, "waitready", "-t", "60"], env=env)
            await trio.run_process([*cli, "init", "alpha", "127.0.0.1:0", "--bootstrap"], env=env)
            await trio.run_process([*cli, "sql", "CREATE TABLE t (k INTEGER)"], env=env)
            await trio.run_process([*cli, "shutdown"], env=env)
            assert await daemon.wait() == 0
    lines = b"".join(stderr).decode().splitlines()
    assert lines, "the daemon logged nothing"
    objects = [json.loads(line) for line in lines]  # every line parses
    for obj in objects:
        assert set(obj) == {"time", "level", "logger", "member", "message", "exc_info"}
    members = {o["member"] for o in objects if o["logger"].startswith("microtrio.")}
    assert "alpha" in members, members
    assert None not in members, [o for o in objects if o["member"] is None]
    loggers = {o["logger"] for o in objects if o["member"] == "alpha"}
    assert {"microtrio.daemon", "microtrio.replication.driver"} <= loggers, loggers
