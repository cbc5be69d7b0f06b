"""The cluster components on real Raft: admission adds joiners as stand-bys, heartbeat rounds
promote them one change at a time, removal shrinks the cluster, including the leader.

Members here are the replication test harness's (real TLS listeners on 127.0.0.1 port 0,
durable logs, replicated databases); member-to-member REST calls are faked.
"""

from __future__ import annotations

import datetime
import itertools
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from replication._raft_cluster import Cluster, Member, Pki, open_cluster, sql

from microtrio._cluster import _members as members
from microtrio._cluster._admission import Admission, JoinRequest, KeyPairEntry
from microtrio._cluster._heartbeat import Heartbeat, HeartbeatConfig
from microtrio._cluster._recovery import (
    DqliteMember,
    import_recovery_tarball,
    members_yaml,
    parse_members_yaml,
    read_members,
    recover,
)
from microtrio._cluster._roles import Removal, ReplicationMembership
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._db import ExtensionRegistry
from microtrio._state import StateDir
from microtrio.raft import Role

from .conftest import NOW

CEILING = 60.0
NAMES = ["member1", "member2", "member3"]


class Quiet:
    """A member client that answers everything (the REST side is not under test here)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        await trio.lowlevel.checkpoint()
        return None

    async def aclose(self) -> None:
        pass


def entry(pki: Pki, member: Member) -> TrustedMember:
    return TrustedMember(member.name, member.address, pki.members[member.name].cert.decode())


async def join(cluster: Cluster, pki: Pki, admission: Admission, name: str, secret: str,
               root: Path) -> Member:
    joiner = Member(name, root, pki)
    cluster.members.append(joiner)
    await joiner.listen(cluster.nursery, None)
    request = JoinRequest(name=name, address=joiner.address,
                          certificate=pki.members[name].cert.decode(), schema_internal=6,
                          schema_external=0, extensions=tuple(ExtensionRegistry().names),
                          secret=secret)
    response = await admission.admit(request, remote="127.0.0.1")
    assert name in [m.name for m in response.cluster_members]
    await joiner.start_database(cluster.addresses())
    for other in cluster.running():
        other.repl.sync_addresses(cluster.addresses())
    leader = await cluster.leader()
    await cluster.wait_applied(leader.repl.driver.applied_index, [joiner])
    await joiner.open_database()
    return joiner


async def test_join_promote_remove_on_raft(tmp_path: Path) -> None:
    pki = Pki.create(NAMES)
    minutes = itertools.count()

    def wall() -> datetime.datetime:  # a minute per call: no round is ever skipped
        return NOW + datetime.timedelta(minutes=next(minutes))

    async def credentials() -> tuple[str, str, Mapping[str, KeyPairEntry]]:
        return pki.cluster.cert.decode(), pki.cluster.key.decode(), {}

    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 1, pki=pki) as cluster:
            m1 = cluster[0]
            store = Truststore(tmp_path / "ts1")
            store.add(entry(pki, m1))
            secrets: dict[str, str] = {}

            def seed(conn: Any) -> None:
                members.insert_member(conn, name="member1", address=m1.address,
                                      certificate=pki.members["member1"].cert.decode(),
                                      schema_internal=6, schema_external=0,
                                      extensions=ExtensionRegistry().names, role="voter")
                for name in NAMES[1:]:
                    secrets[name] = f"secret-{name}"
                    members.insert_token(conn, name=name, secret=secrets[name], expiry=None,
                                         now=NOW)

            await m1.db.transaction(seed)
            membership = ReplicationMembership(m1.repl)
            lock = trio.Lock()
            admission = Admission(own_name="member1", db=m1.db, truststore=store,
                                  membership=membership, extensions=ExtensionRegistry().names,
                                  credentials=credentials, wall_clock=wall, lock=lock)
            for name in NAMES[1:]:
                await join(cluster, pki, admission, name, secrets[name], tmp_path)
            conf = await membership.configuration()
            assert sorted(conf.values()) == [Role.STANDBY, Role.STANDBY, Role.VOTER]

            heartbeat = Heartbeat(name="member1", address=m1.address, db=m1.db,
                                  membership=membership, truststore=store,
                                  client_factory=Quiet, wall_clock=wall,
                                  caught_up=membership.caught_up,
                                  config=HeartbeatConfig(interval=10), lock=lock)
            changes = 0
            for _ in range(10):
                result = await heartbeat.run_round()
                changes += result.change is not None
                if result.change is None and changes:
                    break
            assert changes == 2  # one promotion per round
            conf = await membership.configuration()
            assert set(conf.values()) == {Role.VOTER}
            rows = await m1.db.read(members.list_members)
            assert {r.role for r in rows} == {"voter"}
            assert [m.name for m in store.members()] == NAMES

            def removal(own: Member) -> Removal:
                async def post_remove(force: bool) -> None:
                    await trio.lowlevel.checkpoint()

                return Removal(own_name=own.name, db=own.db,
                               membership=ReplicationMembership(own.repl), truststore=store,
                               client_factory=Quiet, post_remove=post_remove,
                               node_id=lambda n: next(m.id for m in cluster.members
                                                      if m.name == n), lock=lock)

            assert (await removal(m1).remove("member3")).removed
            # the leader removes itself: leadership moves first, the new leader finishes
            outcome = await removal(m1).remove("member1")
            assert not outcome.removed and outcome.moved_to == cluster[1].id
            m2 = cluster[1]
            assert (await removal(m2).remove("member1")).removed
            status = await m2.repl.status()
            assert status.conf.as_dict() == {m2.id: Role.VOTER}
            # the survivor still commits on its own
            await m2.db.transaction(sql("CREATE TABLE after_removal (k INTEGER)"))
            assert [r.name for r in await m2.db.read(members.list_members)] == ["member2"]


async def test_two_members_survive_removal_of_the_leader(tmp_path: Path) -> None:
    pki = Pki.create(NAMES[:2])

    async def credentials() -> tuple[str, str, Mapping[str, KeyPairEntry]]:
        return pki.cluster.cert.decode(), pki.cluster.key.decode(), {}

    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 1, pki=pki) as cluster:
            m1 = cluster[0]
            store = Truststore(tmp_path / "ts1")
            store.add(entry(pki, m1))

            def seed(conn: Any) -> None:
                members.insert_member(conn, name="member1", address=m1.address,
                                      certificate=pki.members["member1"].cert.decode(),
                                      schema_internal=6, schema_external=0,
                                      extensions=ExtensionRegistry().names, role="voter")
                members.insert_token(conn, name="member2", secret="s2", expiry=None, now=NOW)

            await m1.db.transaction(seed)
            admission = Admission(own_name="member1", db=m1.db, truststore=store,
                                  membership=ReplicationMembership(m1.repl),
                                  extensions=ExtensionRegistry().names,
                                  credentials=credentials, wall_clock=lambda: NOW)
            m2 = await join(cluster, pki, admission, "member2", "s2", tmp_path)
            heartbeat = Heartbeat(name="member1", address=m1.address, db=m1.db,
                                  membership=ReplicationMembership(m1.repl), truststore=store,
                                  client_factory=Quiet,
                                  wall_clock=lambda: NOW + datetime.timedelta(hours=1))
            result = await heartbeat.run_round()
            assert result.change is None  # two members: one voter and one stand-by
            assert result.roles["member2"].new == "stand-by"

            async def post_remove(force: bool) -> None:
                await trio.lowlevel.checkpoint()

            def removal(own: Member) -> Removal:
                return Removal(own_name=own.name, db=own.db,
                               membership=ReplicationMembership(own.repl), truststore=store,
                               client_factory=Quiet, post_remove=post_remove,
                               node_id=lambda n: next(m.id for m in cluster.members
                                                      if m.name == n))

            outcome = await removal(m1).remove("member1")  # the only voter, and the leader
            assert outcome.moved_to == m2.id
            assert (await removal(m2).remove("member1")).removed
            assert (await m2.repl.status()).conf.as_dict() == {m2.id: Role.VOTER}
            await m2.db.transaction(sql("CREATE TABLE survived (k INTEGER)"))


async def test_recovery_from_quorum_loss_on_raft(tmp_path: Path) -> None:
    pki = Pki.create(NAMES)
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3, pki=pki) as cluster:
            m1, m2, m3 = cluster[0], cluster[1], cluster[2]
            leader = await cluster.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            await leader.db.transaction(sql("INSERT INTO t VALUES (1), (2)"))
            await cluster.wait_applied(leader.repl.driver.applied_index)
            for member in cluster.members:
                member.kill()
            for member in cluster.members:
                await member.wait_stopped()

            # member3 is lost for good: member1 forces {member1, member2} as voters
            def trust(directory: str) -> Truststore:
                store = Truststore(tmp_path / directory)
                for k, name in enumerate(NAMES, start=1):
                    store.add(TrustedMember(name, f"127.0.0.1:{9000 + k}",
                                            pki.members[name].cert.decode()))
                return store

            state1, store1 = StateDir(m1.dir), trust("ts1")
            current = await trio.to_thread.run_sync(read_members, state1, store1.members())
            edited = [m if m.name != "member3" else DqliteMember(m.id, m.name, m.address,
                                                                 Role.SPARE) for m in current]
            edited = parse_members_yaml(members_yaml(edited), current)
            result = await trio.to_thread.run_sync(lambda: recover(
                state1, store1, own_name="member1", current=current, edited=edited, now=NOW))
            shutil.copy(result.tarball, m2.dir / "recovery_db.tar.gz")
            own = await trio.to_thread.run_sync(lambda: import_recovery_tarball(
                StateDir(m2.dir), trust("ts2"), own_name="member2", now=NOW))
            assert own is not None and own.role is Role.VOTER

            await cluster.start([m1, m2], bootstrap=None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(m1.open_database)
                nursery.start_soon(m2.open_database)
            leader = await cluster.leader()
            assert leader in (m1, m2) and not m3.running
            await leader.db.transaction(sql("INSERT INTO t VALUES (3)"))
            status = await leader.repl.status()
            assert status.conf.as_dict() == {m1.id: Role.VOTER, m2.id: Role.VOTER,
                                             m3.id: Role.SPARE}
            follower = m2 if leader is m1 else m1
            await cluster.wait_applied(leader.repl.driver.applied_index, [follower])
            assert await follower.db.read(sql("SELECT k FROM t ORDER BY k"),
                                          stale=True) == [(1,), (2,), (3,)]
