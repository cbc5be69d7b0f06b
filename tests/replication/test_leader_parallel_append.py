"""The leader sends its appends while it writes the same entries to its own disk (Raft
thesis 10.2.1), and still commits nothing before its own write returned."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster, sql

from microtrio._replication import AsyncLogStore, DriverConfig, _transport
from microtrio.raft import Entry, HardState, Message, MsgApp, Snapshot

CEILING = 60.0
# a leader held in its own write sends no heartbeats: keep the followers patient meanwhile
PATIENT = DriverConfig(tick_interval=0.05, election_tick=40)


async def test_followers_persist_while_the_leader_is_still_writing(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=PATIENT) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            store = leader.repl._store
            real = store.persist
            holding = trio.Event()
            release = trio.Event()
            armed = [True]

            async def slow_persist(
                hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
            ) -> None:
                if entries and armed[0]:
                    armed[0] = False
                    holding.set()
                    await release.wait()  # the leader's own write has not returned yet
                await real(hard_state, entries, snapshot)

            store.persist = slow_persist  # type: ignore[method-assign]
            assert isinstance(store, AsyncLogStore)
            followers = [m for m in cluster.running() if m is not leader]
            await cluster.wait_applied(leader.repl.driver.applied_index, followers)
            before = {f.name: (await f.repl.driver.status()).last_index for f in followers}
            commit_before = leader.repl.driver._commit
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leader.db.transaction, sql("INSERT INTO t VALUES (1)"))
                await holding.wait()
                # both followers receive and persist the entry meanwhile ...
                while True:
                    now = {f.name: (await f.repl.driver.status()).last_index for f in followers}
                    if all(now[name] > before[name] for name in now):
                        break
                    await trio.sleep(0.01)
                # ... but the leader commits (and applies) nothing before its write returns
                assert leader.repl.driver._commit == commit_before
                assert leader.db.statistics().applied_index <= commit_before
                release.set()
            rows = await leader.db.read(sql("SELECT k FROM t"))
            assert rows == [(1,)]


async def test_the_appends_are_written_to_the_links_before_the_leader_persists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender tasks get to write the appends before the storage thread starts (it would
    hold the GIL for its own work until the fsync, delaying the followers' copy)."""
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=DriverConfig()) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            store = leader.repl._store
            transport = leader.repl.driver._transport
            real = store.persist
            real_send = transport.send
            late: list[int] = []  # writes whose appends had not been written at the persist
            frames = [0, 0]  # frames the leader's senders encoded (written at once), at queueing

            def encode(node_id: int, payloads: list[bytes]) -> bytes:
                if node_id == leader.id:
                    frames[0] += 1
                return real_encode(node_id, payloads)

            def send(messages: Iterable[Message]) -> None:
                messages = list(messages)
                if any(isinstance(m, MsgApp) and m.entries for m in messages):
                    frames[1] = frames[0]
                real_send(messages)

            async def watched(
                hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
            ) -> None:
                if entries and frames[0] < frames[1] + 2:  # one frame to each follower
                    late.append(entries[0].index)
                await real(hard_state, entries, snapshot)

            real_encode = _transport.encode_record
            store.persist = watched  # type: ignore[method-assign]
            transport.send = send  # type: ignore[method-assign]
            monkeypatch.setattr(_transport, "encode_record", encode)
            for k in range(20):
                await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            assert late == []
