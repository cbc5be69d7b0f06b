"""A replica whose committed log prefix is damaged refuses to start, naming the file, and
nothing committed is lost: the other members still have every acknowledged write and keep
accepting writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster, sql, write

from microtrio._errors import CorruptionError
from microtrio._replication._logstore import LogStore

CEILING = 90.0


def _flip_committed_byte(raft_dir: Path) -> Path:
    """Flip one byte inside the first record of the oldest segment (a committed entry)."""
    oldest = sorted(raft_dir.glob("log-*.seg"))[0]
    data = bytearray(oldest.read_bytes())
    data[len(data) // 4] ^= 0xFF
    oldest.write_bytes(bytes(data))
    return oldest


async def test_damaged_committed_log_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
            for k in range(20):
                await write(cluster[k % 3], sql("INSERT INTO t VALUES (?, ?)", k, "x" * 50))
            victim = next(m for m in cluster.members if m is not leader)
            await cluster.wait_applied(leader.repl.driver.applied_index, [victim])
            victim.kill()
            await victim.wait_stopped()

            damaged = await trio.to_thread.run_sync(_flip_committed_byte, victim.raft_dir)
            store = LogStore(victim.raft_dir)
            with pytest.raises(CorruptionError) as info:
                await trio.to_thread.run_sync(store.load)
            assert damaged.name in str(info.value)  # the error names the damaged file
            store.close()

            # the survivors still hold every acknowledged write and keep accepting more
            rows = await leader.db.read(sql("SELECT count(*) FROM t"))
            assert rows == [(20,)]
            await write(leader, sql("INSERT INTO t VALUES (100, 'after')"))
