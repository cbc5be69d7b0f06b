"""A client write that changes nothing must be acknowledged only on a state at least as new
as a read index: on a member cut off from the leader, "PUT k=A" after an acknowledged
"PUT k=B" must not be acknowledged as a no-op of its stale state (Database._run_batch runs a
fenced batch that changed nothing once more after the committer's read barrier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster, sql

from microtrio._errors import MicrotrioError
from microtrio._replication import CommitterConfig, Faults

CEILING = 60.0
UPSERT = "INSERT INTO kv VALUES ('k', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


async def test_a_no_op_write_on_a_stale_member_is_not_acknowledged(tmp_path: Path) -> None:
    faults = Faults()
    config = CommitterConfig(leader_wait=1.0, read_attempt=0.2)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, faults=faults, committer_config=config) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"))
            await leader.db.transaction(sql(UPSERT, "A"))
            stale = next(m for m in cluster.running() if m is not leader)
            await stale.db.read(sql("SELECT 1"))  # it has applied k=A
            faults.isolate(stale.id, [m.id for m in cluster.members if m is not stale])
            await leader.db.transaction(sql(UPSERT, "B"))  # acknowledged by the other two
            # k=A on the stale member: a no-op there, but not the latest value
            with pytest.raises(MicrotrioError):
                await stale.db.transaction(sql(UPSERT, "A"))
            assert await leader.db.read(sql("SELECT v FROM kv")) == [("B",)]
            faults.heal()
            # once it can reach a read index again, the same write commits
            await stale.db.transaction(sql(UPSERT, "A"))
            assert await leader.db.read(sql("SELECT v FROM kv")) == [("A",)]


async def test_a_no_op_write_on_an_up_to_date_member_is_acknowledged(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"))
            await leader.db.transaction(sql(UPSERT, "A"))
            for member in cluster.running():
                await member.db.read(sql("SELECT 1"))  # it has applied k=A
                commits = member.db.statistics().commits
                await member.db.transaction(sql(UPSERT, "A"))
                assert member.db.statistics().commits == commits  # nothing committed
