"""A leader's appends that only carry a new commit index leave after it applied the
committed entries and woke whoever waits for them (the client's answer does not queue
behind those sends); appends with entries and everything else still leave at once.

With ``commit_notify_delay=0`` (eager notifications): by default most of them are held and
superseded by the next append instead (``test_commit_hold.py``); those that leave, leave
later still."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
from _raft_cluster import open_cluster, sql

from microtrio._replication import DriverConfig
from microtrio.raft import MsgApp

CEILING = 60.0


async def test_commit_only_appends_leave_after_the_apply(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        config = DriverConfig(commit_notify_delay=0)
        async with open_cluster(tmp_path, 3, driver_config=config) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            driver = leader.repl.driver
            transport = driver._transport
            real = transport.send
            seen: list[tuple[int, int]] = []  # (commit carried, applied here when queued)

            def send(messages: Iterable[Any]) -> None:
                messages = list(messages)
                for m in messages:
                    if isinstance(m, MsgApp) and not m.entries and not m.ack:
                        seen.append((m.commit, driver.applied_index))
                real(messages)

            transport.send = send  # type: ignore[method-assign]
            try:
                for k in range(20):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            finally:
                transport.send = real  # type: ignore[method-assign]
            assert len(seen) >= 20  # every write's commit reaches two followers this way
            late = [(commit, applied) for commit, applied in seen if applied < commit]
            assert late == []
            # and the followers still learn every commit promptly (no heartbeat needed)
            followers = [m for m in cluster.running() if m is not leader]
            await cluster.wait_applied(driver.applied_index, followers)
            for f in followers:
                rows = await f.db.read(sql("SELECT count(*) FROM t"), stale=True)
                assert rows == [(20,)]
