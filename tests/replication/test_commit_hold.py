"""Lazy commit notifications on a 3-member cluster: the leader holds the appends that only
carry a new commit index; the next write's append supersedes them, and they leave after
``commit_notify_delay`` otherwise. Followers that wait for their own apply (a write they
forwarded, a linearizable read) are told at once; nothing is lost when the leader changes
with notifications held.

Heartbeats carry the commit index too, so where a test must see that a follower learned a
commit from an append, the leader's heartbeats are sent with commit 0 (safe: a follower only
ever raises its commit index)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from _raft_cluster import FAST_DRIVER, Cluster, Member, open_cluster, sql

from microtrio._replication import DriverConfig
from microtrio.raft import MsgApp, MsgHeartbeat

CEILING = 60.0
#: Long enough that anything waiting for a held notification hits the test's ceiling.
FOREVER = 30.0
PROMPT_CEILING = 20.0  # < FOREVER


def _config(delay: float) -> DriverConfig:
    return dataclasses.replace(FAST_DRIVER, commit_notify_delay=delay)


@dataclasses.dataclass
class _Sent:
    """What a member's driver handed to its transport."""

    appends: dict[int, int] = dataclasses.field(default_factory=dict)  # dst -> with entries
    others: dict[int, int] = dataclasses.field(default_factory=dict)  # dst -> the rest
    #: appends without entries: (when, dst, commit, ack wanted)
    empty: list[tuple[float, int, int, bool]] = dataclasses.field(default_factory=list)

    def commit_only(self, dst: int) -> list[int]:
        """The commit notifications sent to ``dst`` (no entries, no answer wanted)."""
        return [commit for _, to, commit, ack in self.empty if to == dst and not ack]

    def told(self, dst: int) -> list[tuple[float, int]]:
        """(when, commit) of every append without entries to ``dst``: a heartbeat answer
        from a follower that lags sends one that wants an answer, carrying the commit too."""
        return [(t, commit) for t, to, commit, _ in self.empty if to == dst]


@contextmanager
def _watch(member: Member, *, heartbeat_commits: bool = True) -> Iterator[_Sent]:
    transport = member.repl.driver._transport
    real = transport.send
    sent = _Sent()

    def send(messages: Iterable[Any]) -> None:
        out = []
        for m in messages:
            if isinstance(m, MsgApp) and m.entries:
                sent.appends[m.dst] = sent.appends.get(m.dst, 0) + 1
            elif isinstance(m, MsgApp):
                sent.empty.append((trio.current_time(), m.dst, m.commit, m.ack))
            else:
                sent.others[m.dst] = sent.others.get(m.dst, 0) + 1
            if isinstance(m, MsgHeartbeat) and not heartbeat_commits:
                m = dataclasses.replace(m, commit=0)
            out.append(m)
        real(out)

    transport.send = send  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        transport.send = real  # type: ignore[method-assign]


async def _follower_with_table(cluster: Cluster, leader: Member) -> Member:
    """A follower, once every member applied what the leader has (the table included)."""
    follower = next(m for m in cluster.running() if m is not leader)
    await cluster.wait_applied(leader.repl.driver.applied_index)
    return follower


async def _count(member: Member) -> int:
    rows = await member.db.read(sql("SELECT count(*) FROM t"), stale=True)
    return int(rows[0][0])


async def test_the_next_append_supersedes_a_held_notification(tmp_path: Path) -> None:
    """At one write at a time each follower gets one message per write, not two."""
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(FOREVER)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            followers = [m.id for m in cluster.running() if m is not leader]
            stats0 = leader.repl.driver._transport.statistics().peers
            with _watch(leader) as sent:
                for k in range(20):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            stats1 = leader.repl.driver._transport.statistics().peers
            for f in followers:
                appends = sent.appends.get(f, 0)
                assert appends >= 20
                assert sent.commit_only(f) == []  # every one was superseded or is held
                # the transport's own count: one message per write, plus the heartbeats
                # (and a rare empty append a heartbeat answer draws); eagerly, twice that
                extra = sent.others.get(f, 0) + len(sent.told(f)) + 2  # + 2: still queued
                assert stats1[f].sent - stats0[f].sent <= appends + extra
            hold = leader.repl.driver._hold
            assert hold is not None and 1 <= len(hold) <= 2  # the last write's, held
            assert hold.deadline > trio.current_time()


async def test_eager_notifications_with_no_delay(tmp_path: Path) -> None:
    """commit_notify_delay=0 is the old behaviour: one notification per write each."""
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(0.0)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            followers = [m.id for m in cluster.running() if m is not leader]
            with _watch(leader) as sent:
                for k in range(20):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            assert leader.repl.driver._hold is None
            for f in followers:
                assert len(sent.commit_only(f)) >= 20


async def test_held_notifications_leave_after_the_delay(tmp_path: Path) -> None:
    """Followers apply the last write without any further write (or heartbeat's help)."""
    delay = 0.2
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(delay)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            followers = [m for m in cluster.running() if m is not leader]
            term = leader.repl.driver.term
            with _watch(leader, heartbeat_commits=False) as sent:
                for k in range(5):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
                returned = trio.current_time()
                last = leader.repl.driver.applied_index
                await cluster.wait_applied(last, followers)
            assert leader.repl.driver.term == term and leader.repl.driver.is_leader
            for f in followers:
                told = [t for t, commit in sent.told(f.id) if commit == last]
                assert len(told) == 1 and told[0] > returned  # left after the write returned
                assert await _count(f) == 5
            hold = leader.repl.driver._hold
            assert hold is not None and len(hold) == 0


async def test_writes_through_a_follower_are_told_their_commit_at_once(
    tmp_path: Path,
) -> None:
    """A forwarded write batch (ForwardPropose) and a statement request (ForwardExecute)
    return without waiting for the delay: the follower applies its own write first."""
    with trio.fail_after(PROMPT_CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(FOREVER)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            follower = await _follower_with_table(cluster, leader)
            other = next(m for m in cluster.running() if m not in (leader, follower))
            with _watch(leader, heartbeat_commits=False) as sent:
                for k in range(5):
                    await follower.db.transaction(sql("INSERT INTO t VALUES (?)", k))
                    await follower.db.execute("INSERT INTO t VALUES (?)", (100 + k,))
            assert await _count(follower) == 10
            assert len(sent.commit_only(follower.id)) >= 10
            assert sent.commit_only(other.id) == []  # the other follower's are still held


async def test_a_statement_request_answer_brings_the_held_commit_along(
    tmp_path: Path,
) -> None:
    """A statement request that writes nothing is answered with the leader's applied
    index, which the asking follower waits for: the held notification goes out first."""
    with trio.fail_after(PROMPT_CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(FOREVER)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            follower = await _follower_with_table(cluster, leader)
            with _watch(leader, heartbeat_commits=False):
                for k in range(3):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
                    hold = leader.repl.driver._hold
                    assert hold is not None and len(hold) >= 1
                    result = await follower.db.execute("SELECT count(*) FROM t")
                    assert result.rows == ((k + 1,),)
                    assert follower.repl.driver.applied_index >= leader.db.applied_index


async def test_a_follower_read_is_told_the_held_commit_at_once(tmp_path: Path) -> None:
    """A linearizable read on a follower after a write on the leader: the read point's
    answer brings the held notification along, so the read does not wait for the delay."""
    with trio.fail_after(PROMPT_CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(FOREVER)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            follower = await _follower_with_table(cluster, leader)
            with _watch(leader, heartbeat_commits=False) as sent:
                for k in range(3):
                    await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
                    hold = leader.repl.driver._hold
                    assert hold is not None and len(hold) >= 1
                    rows = await follower.db.read(sql("SELECT count(*) FROM t"))
                    assert rows == [(k + 1,)]
            assert len(sent.told(follower.id)) >= 3  # one ahead of each read point


async def test_nothing_is_lost_when_the_leader_changes_with_notifications_held(
    tmp_path: Path,
) -> None:
    """Held notifications are dropped when the leader steps down (a transfer) and lost
    with it (a crash); every acknowledged write survives on the new leader."""
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, driver_config=_config(FOREVER)) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            for k in range(10):
                await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            hold = leader.repl.driver._hold
            assert hold is not None and len(hold) >= 1
            await leader.repl.transfer_leadership()
            assert len(hold) == 0  # dropped on stepping down
            second = await cluster.leader()
            assert second is not leader
            for k in range(10, 20):
                await second.db.execute("INSERT INTO t VALUES (?)", (k,))
            second.kill()  # with its last write's notifications held
            await second.wait_stopped()
            third = await cluster.leader()
            assert await _count_linearizable(third) == 20
            await third.db.execute("INSERT INTO t VALUES (?)", (20,))
            await cluster.restart(second)
            await cluster.wait_applied(third.repl.driver.applied_index)
            for m in cluster.running():
                assert await _count_linearizable(m) == 21


async def _count_linearizable(member: Member) -> int:
    rows = await member.db.read(sql("SELECT count(*) FROM t"))
    return int(rows[0][0])
