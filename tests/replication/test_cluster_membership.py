"""Membership hooks of the replicated database (used by the clustering layer): a new member
joins as a stand-by and catches up, is promoted, leadership is handed over, members are
demoted and removed - all through the Raft log, one change at a time."""

from __future__ import annotations

from pathlib import Path

import trio
from _raft_cluster import Member, Pki, checksums, open_cluster, sql, write

from microtrio.raft import Role, StateRole

CEILING = 60.0


async def test_join_as_standby_promote_transfer_demote_remove(tmp_path: Path) -> None:
    pki = Pki.create([f"member{k}" for k in range(1, 5)])
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, pki=pki) as cluster:
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            for k in range(5):
                await leader.db.transaction(sql("INSERT INTO t VALUES (?)", k))

            # a fresh member (empty state, no bootstrap) is added by the leader
            newcomer = Member("member4", tmp_path, pki)
            cluster.members.append(newcomer)
            await newcomer.listen(cluster.nursery, None)
            await newcomer.start_database(cluster.addresses())
            await leader.repl.add_member(newcomer.id, newcomer.address, Role.STANDBY)
            for member in cluster.running():  # the cluster layer syncs member addresses
                member.repl.sync_addresses({newcomer.id: newcomer.address, member.id: "x"})
            status = await leader.repl.status()
            assert status.conf.role_of(newcomer.id) is Role.STANDBY
            await cluster.wait_applied(leader.repl.driver.applied_index, [newcomer])
            await newcomer.open_database()
            rows = await newcomer.db.read(sql("SELECT count(*) FROM t"))
            assert rows == [(5,)]
            # a stand-by writes through the leader like any member
            await write(newcomer, sql("INSERT INTO t VALUES (100)"))

            await leader.repl.promote(newcomer.id)
            status = await leader.repl.status()
            assert newcomer.id in status.conf.voters and len(status.conf.voters) == 4
            # the newcomer's own view of the configuration follows the log
            assert (await newcomer.repl.status()).conf == status.conf

            # hand leadership to the newcomer, then demote and remove the old leader
            assert await leader.repl.transfer_leadership(newcomer.id) == newcomer.id
            # the old leader knows once the newcomer's first append reached it; that append
            # leaves before the newcomer has written its own Ready to disk, and the driver's
            # role (a view of the node's) changes after that write
            while newcomer.repl.driver.role is not StateRole.LEADER:
                await newcomer.repl.driver.wait_changed()
            await newcomer.repl.demote(leader.id, Role.SPARE)
            await newcomer.repl.remove_member(leader.id)
            status = await newcomer.repl.status()
            assert leader.id not in status.conf.members()
            assert len(status.conf.voters) == 3

            await write(
                cluster[1] if cluster[1] is not leader else cluster[2],
                sql("INSERT INTO t VALUES (200)"),
            )
            remaining = [m for m in cluster.members if m is not leader]
            await cluster.wait_applied(newcomer.repl.driver.applied_index, remaining)
            sums = [await checksums(m) for m in remaining]
            assert all(s == sums[0] for s in sums)


async def test_transfer_to_the_best_voter_by_default(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            new = await leader.repl.transfer_leadership()
            assert new != leader.id
            assert (await cluster.leader()).id == new
            info = leader.repl.leader()
            assert info.id == new and info.address == cluster.by_id(new).address
