"""Issue 4: real replicated members (real TLS, hypercorn, storage, driver, Database) in one
trio.run."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
from _raft_cluster import Member, checksums, open_cluster, sql, write

from microtrio._errors import MicrotrioError, NoLeaderError, OutcomeUnknownError
from microtrio._replication import CommitterConfig, DriverConfig, Faults

CEILING = 60.0


async def test_three_members_write_through_leader_and_followers(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            followers = [m for m in cluster.members if m is not leader]
            await leader.db.transaction(sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await leader.db.transaction(sql("INSERT INTO t (v) VALUES ('from leader')"))
            for k, follower in enumerate(followers):
                await follower.db.transaction(sql("INSERT INTO t (v) VALUES (?)", f"f{k}"))
            # linearizable read on a follower sees every acknowledged write
            rows = await followers[0].db.read(sql("SELECT v FROM t ORDER BY id"))
            assert [r[0] for r in rows] == ["from leader", "f0", "f1"]
            index = leader.repl.driver.applied_index
            await cluster.wait_applied(index)
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]
            assert "t" in sums[0]


async def test_leader_killed_new_leader_takes_over_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            acked = []
            for k in range(10):
                await write(cluster.members[k % 3], sql("INSERT INTO t VALUES (?)", k))
                acked.append(k)
            old_term = leader.repl.driver.term
            leader.kill()
            new_leader = await cluster.leader()
            assert new_leader is not leader
            assert new_leader.repl.driver.term > old_term
            survivors = cluster.running()
            for k in range(10, 20):
                await write(survivors[k % 2], sql("INSERT INTO t VALUES (?)", k))
                acked.append(k)
            for member in survivors:
                rows = await member.db.read(sql("SELECT k FROM t ORDER BY k"))
                assert [r[0] for r in rows] == acked
            # the old leader comes back from disk and catches up
            await cluster.restart(leader)
            rows = await leader.db.read(sql("SELECT k FROM t ORDER BY k"))
            assert [r[0] for r in rows] == acked
            await write(leader, sql("INSERT INTO t VALUES (100)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]


async def test_whole_cluster_restarts_from_disk(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
            for k in range(5):
                await leader.db.transaction(sql("INSERT INTO t VALUES (?, randomblob(8))", k))
            before = await checksums(leader)
            applied = leader.repl.driver.applied_index
            await cluster.wait_applied(applied)  # every member has it on disk
            for member in cluster.members:
                member.kill()
            for member in cluster.members:
                await member.wait_stopped()
            await cluster.start(cluster.members, bootstrap=[m.id for m in cluster.members])
            async with trio.open_nursery() as nursery:
                for member in cluster.members:
                    nursery.start_soon(member.open_database)
            leader = await cluster.leader()
            for member in cluster.members:
                # nothing applied twice: the applied index resumed where it was
                assert member.repl.driver.applied_index >= applied
                assert await checksums(member) == before
            await leader.db.transaction(sql("INSERT INTO t VALUES (99, 'after')"))
            rows = await cluster[0].db.read(sql("SELECT count(*) FROM t"))
            assert rows == [(6,)]


async def test_five_members_survive_two_failures(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 5) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            leader.kill()
            others = [m for m in cluster.members if m is not leader]
            others[0].kill()
            new_leader = await cluster.leader()
            assert new_leader not in (leader, others[0])
            for k, member in enumerate(cluster.running()):
                await write(member, sql("INSERT INTO t VALUES (?)", k))
            for member in cluster.running():
                assert await member.db.read(sql("SELECT count(*) FROM t")) == [(3,)]


async def test_far_behind_follower_catches_up_by_chunked_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="microtrio.replication.driver")
    config = DriverConfig(
        tick_interval=0.05, snapshot_threshold=20, snapshot_trailing=5, snapshot_chunk_size=16384
    )
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=config) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)"))
            lagging = next(m for m in cluster.members if m is not leader)
            lagging.kill()
            await lagging.wait_stopped()
            behind = lagging.raft_dir
            for k in range(60):
                await leader.db.transaction(sql("INSERT INTO t VALUES (?, randomblob(2048))", k))
            status = await leader.repl.status()
            assert status.first_index > 10  # the leader's log no longer holds what it misses
            caplog.clear()
            await cluster.restart(lagging)
            await cluster.wait_applied(leader.repl.driver.applied_index, [lagging])
            assert any(
                r.name == "microtrio.replication.driver" and "installing the snapshot" in r.message
                for r in caplog.records
            )
            received = list(behind.glob("snapshot-*"))  # the received snapshot is durable
            assert received
            assert received[0].stat().st_size > 4 * config.snapshot_chunk_size  # many chunks
            assert await checksums(lagging) == await checksums(leader)
            # and it keeps replicating normally afterwards
            await write(lagging, sql("INSERT INTO t VALUES (1000, x'00')"))
            rows = await leader.db.read(sql("SELECT count(*) FROM t"))
            assert rows == [(61,)]


async def test_torn_log_tail_is_repaired_on_start(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            await leader.db.transaction(sql("INSERT INTO t VALUES (1)"))
            victim = next(m for m in cluster.members if m is not leader)
            await cluster.wait_applied(leader.repl.driver.applied_index, [victim])
            victim.kill()
            await victim.wait_stopped()
            newest = sorted(victim.raft_dir.glob("log-*.seg"))[-1]
            size = newest.stat().st_size
            with newest.open("ab") as f:  # a record whose write never completed
                f.write(b"\x00\x00\x01\x00" + b"\xab" * 37)
            await cluster.restart(victim)
            data = await trio.to_thread.run_sync(newest.read_bytes)
            assert b"\xab" * 37 not in data and len(data) >= size  # the torn tail was cut off
            await write(victim, sql("INSERT INTO t VALUES (2)"))
            assert await leader.db.read(sql("SELECT k FROM t ORDER BY k")) == [(1,), (2,)]
            await cluster.wait_applied(leader.repl.driver.applied_index)
            assert await checksums(victim) == await checksums(leader)


async def test_nondeterministic_sql_and_triggers_leave_identical_tables(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(
                sql(
                    "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, r INTEGER, "
                    "at TEXT DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')), b BLOB)"
                )
            )
            await leader.db.transaction(sql("CREATE TABLE audit (id INTEGER PRIMARY KEY, r, at)"))
            await leader.db.transaction(
                sql(
                    "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN "
                    "INSERT INTO audit (r, at) VALUES (random(), datetime('now')); END"
                )
            )
            for k in range(9):
                member = cluster.members[k % 3]
                await write(member, sql("INSERT INTO t (r, b) VALUES (random(), randomblob(16))"))
            await write(cluster[1], sql("UPDATE t SET r = random() WHERE id % 2 = 0"))
            await write(cluster[2], sql("DELETE FROM t WHERE id = 3"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]
            assert {"t", "audit", "sqlite_sequence"} <= set(sums[0])
            assert await leader.db.read(sql("SELECT count(*) FROM audit")) == [(9,)]


async def test_writes_in_flight_when_the_leader_dies_are_never_plainly_failed_if_committed(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            acked: set[int] = set()
            unknown: set[int] = set()
            failed: set[int] = set()
            enough = trio.Event()

            async def writer(member: Member, base: int) -> None:
                for k in range(base, base + 10_000):
                    if member.killed:
                        return
                    try:
                        await member.db.transaction(sql("INSERT INTO t VALUES (?)", k))
                    except OutcomeUnknownError:
                        unknown.add(k)
                    except MicrotrioError:
                        failed.add(k)
                        if member.killed:
                            return
                        with trio.move_on_after(0.2):
                            await member.repl.driver.wait_changed()
                    else:
                        acked.add(k)
                    if len(acked) >= 30 and not leader.killed:
                        enough.set()
                    if leader.killed and sum(1 for a in acked if a >= base) >= 40:
                        return

            async with trio.open_nursery() as nursery:
                for n, member in enumerate(cluster.members):
                    nursery.start_soon(writer, member, 100_000 * (n + 1))
                await enough.wait()
                leader.kill()
            await cluster.leader()
            await cluster.restart(leader)
            await cluster.wait_applied(cluster.running()[0].repl.driver.applied_index)
            for member in cluster.members:
                present = {r[0] for r in await member.db.read(sql("SELECT k FROM t"))}
                assert acked <= present  # nothing acknowledged is lost
                assert not (failed & present)  # a plain failure was really not committed
                assert present <= acked | unknown
            assert len(acked) > 30


async def test_a_write_overwritten_after_a_partition_is_a_definite_failure(
    tmp_path: Path,
) -> None:
    faults = Faults(random.Random(4))
    with trio.fail_after(CEILING):
        async with open_cluster(
            tmp_path, 3, faults=faults, committer_config=CommitterConfig(apply_timeout=30.0)
        ) as cluster:
            old = await cluster.leader()
            await old.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            await cluster.wait_applied(old.repl.driver.applied_index)
            others = [m for m in cluster.members if m is not old]
            faults.isolate(old.id, [m.id for m in others])
            before = (await old.repl.status()).last_index
            outcome: list[BaseException | None] = []

            async def doomed() -> None:
                try:
                    await old.db.transaction(sql("INSERT INTO t VALUES (42)"))
                except MicrotrioError as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed)
                while (await old.repl.status()).last_index == before:
                    await old.repl.driver.wait_changed()  # proposed on the isolated leader
                # the majority elects a new leader and commits other entries
                while not (
                    (lead := others[0].repl.leader().id) in {m.id for m in others}
                    and others[1].repl.leader().id == lead
                ):
                    await others[0].repl.driver.wait_changed()
                await write(others[0], sql("INSERT INTO t VALUES (43)"))
                faults.heal()
            assert len(outcome) == 1
            # the old leader learns that another entry won its index: known not committed
            assert isinstance(outcome[0], NoLeaderError), outcome
            assert "another entry was committed" in str(outcome[0])
            await cluster.wait_applied(others[0].repl.driver.applied_index)
            for member in cluster.members:
                assert await member.db.read(sql("SELECT k FROM t")) == [(43,)]


async def test_partition_nemesis_keeps_acknowledged_writes_and_replicas_identical(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261127)
    faults = Faults(random.Random(7))
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, faults=faults) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            ids = [m.id for m in cluster.members]
            acked: set[int] = set()
            unknown: set[int] = set()
            failed: set[int] = set()
            stop = trio.Event()

            async def writer(member: Member, base: int) -> None:
                k = base
                while not stop.is_set():
                    k += 1
                    try:
                        await member.db.transaction(sql("INSERT INTO t VALUES (?)", k))
                    except OutcomeUnknownError:
                        unknown.add(k)
                    except MicrotrioError:
                        failed.add(k)
                        with trio.move_on_after(0.1):
                            await stop.wait()
                    else:
                        acked.add(k)

            async with trio.open_nursery() as nursery:
                for n, member in enumerate(cluster.members):
                    nursery.start_soon(writer, member, 1_000_000 * (n + 1))
                for _ in range(6):
                    victim = rng.choice(ids)
                    faults.isolate(victim, [i for i in ids if i != victim])
                    await trio.sleep(0.6)  # the nemesis' schedule, not an ordering device
                    faults.heal()
                    await trio.sleep(0.3)
                stop.set()
            leader = await cluster.leader()
            await write(leader, sql("INSERT INTO t VALUES (0)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            for member in cluster.members:
                present = {r[0] for r in await member.db.read(sql("SELECT k FROM t"))} - {0}
                assert acked <= present
                assert not (failed & present)
                assert present <= acked | unknown
            sums = [await checksums(m) for m in cluster.members]
            assert sums[0] == sums[1] == sums[2]
            assert len(acked) > 10  # progress (low bar: CI machines are loaded)


async def test_a_write_that_changes_nothing_needs_no_quorum(tmp_path: Path) -> None:
    # (a restarted daemon records its unchanged versions in its member row at start)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
            await leader.db.transaction(sql("INSERT INTO t VALUES (1, 'same')"))
            survivor = cluster[0] if cluster[0] is not leader else cluster[1]
            await cluster.wait_applied(leader.repl.driver.applied_index, [survivor])
            for member in cluster.members:
                if member is not survivor:
                    member.kill()
            applied = survivor.repl.driver.applied_index
            with trio.fail_after(2):  # far below the committer's leader wait
                # an internal (unfenced) write, as the start-up version row is; a client
                # transaction that changes nothing still waits for a read index
                await survivor.db._submit(sql("UPDATE t SET v = 'same' WHERE k = 1"))
            assert survivor.repl.driver.applied_index == applied
