"""Heartbeat rounds with fake member clients, the receiver, and member statuses."""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from microtrio._client import Client
from microtrio._cluster import _members as members
from microtrio._cluster._heartbeat import (
    HEARTBEAT_PATH,
    ClientFactory,
    Heartbeat,
    HeartbeatConfig,
    HeartbeatInfo,
    MemberStatus,
    RoleTransition,
    member_statuses,
    raft_addresses,
    receive_heartbeat,
)
from microtrio._cluster._members import MemberRow
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._errors import (
    DatabaseNotOpenError,
    ForbiddenError,
    UnavailableError,
    ValidationError,
)
from microtrio._replication import node_id_for
from microtrio.raft import Role

from .conftest import NOW, FakeMembership, InlineDatabase, inline, pair_for

PENDING = members.PENDING

INTERVAL = 10.0


@pytest.fixture
def db() -> InlineDatabase:
    return InlineDatabase()


def wall() -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=trio.current_time())


class FakeClient:
    def __init__(self, address: str, net: FakeNet) -> None:
        self.address = address
        self.net = net

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        assert (method, path) == ("POST", HEARTBEAT_PATH)
        if self.address in self.net.dead:
            await trio.sleep_forever()
        if self.address in self.net.refusing:
            raise UnavailableError(f"Cannot connect to {self.address}")
        self.net.received.setdefault(self.address, []).append(body)
        return None

    async def aclose(self) -> None:
        self.net.closed += 1


class FakeNet:
    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.refusing: set[str] = set()
        self.received: dict[str, list[Any]] = {}
        self.closed = 0

    def factory(self, address: str) -> FakeClient:
        return FakeClient(address, self)


def addr(n: int) -> str:
    return f"127.0.0.1:{9000 + n}"


async def seed(db: InlineDatabase, roles: Mapping[str, str]) -> None:
    def fill(conn: Any) -> None:
        for i, (name, role) in enumerate(roles.items(), start=1):
            members.insert_member(
                conn, name=name, address=addr(i), certificate=pair_for(name).cert.decode(),
                schema_internal=6, schema_external=0, extensions=["a"], role=role)
        members.insert_token(conn, name="new", secret="s2", expiry=None, now=NOW)
        members.insert_token(conn, name="old", secret="s1",
                             expiry=NOW - datetime.timedelta(seconds=1), now=NOW)
    await db.transaction(fill)


def ids(*names: str) -> dict[int, Role]:
    return {node_id_for(n[:-2]): {"V": Role.VOTER, "S": Role.STANDBY, "P": Role.SPARE}[n[-1]]
            for n in names}


def make(db: InlineDatabase, tmp_path: Path, fake: FakeMembership, net: FakeNet,
         hooks: list[Mapping[str, RoleTransition]]) -> tuple[Heartbeat, Truststore]:
    store = Truststore(tmp_path / "truststore")

    async def on_heartbeat(changes: Mapping[str, RoleTransition]) -> None:
        hooks.append(dict(changes))

    hb = Heartbeat(
        name="m1", address=addr(1), db=db, membership=fake, truststore=store,
        client_factory=net.factory, wall_clock=wall, on_heartbeat=on_heartbeat,
        config=HeartbeatConfig(interval=INTERVAL), run_blocking=inline,
    )
    return hb, store


async def test_round_on_leader(
    db: InlineDatabase, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await seed(db, {"m1": "voter", "m2": "voter", "m3": "voter", "m4": PENDING, "m5": PENDING})
    fake = FakeMembership(ids("m1:V", "m2:V", "m3:V", "m4:S"), leader=node_id_for("m1"))
    net = FakeNet()
    net.dead.add(addr(3))
    hooks: list[Mapping[str, RoleTransition]] = []
    hb, store = make(db, tmp_path, fake, net, hooks)
    with trio.fail_after(100):
        start = trio.current_time()
        result = await hb.run_round()
        took = trio.current_time() - start
    assert took == pytest.approx(2 * INTERVAL)  # the dead member cost two intervals, no more
    assert result.answered == ("m2", "m4", "m5") and result.failed == ("m3",)
    assert result.purged_tokens == 1
    # the body: every member keyed by address, the leader's address and max versions
    body = net.received[addr(2)][0]
    assert body["leader_address"] == addr(1) and body["max_schema_internal"] == 6
    assert sorted(body["cluster_members"]) == [addr(i) for i in range(1, 6)]
    assert body["cluster_members"][addr(4)]["name"] == "m4"
    assert net.closed == 4
    # one transaction: roles from Raft, heartbeats of who answered, tokens purged
    rows = {r.name: r for r in await db.read(members.list_members)}
    assert {n: r.role for n, r in rows.items()} == {
        "m1": "voter", "m2": "voter", "m3": "voter", "m4": "stand-by", "m5": PENDING}
    stamp = members.format_time(NOW)
    assert [n for n, r in rows.items() if r.heartbeat == stamp] == ["m1", "m2", "m4", "m5"]
    assert [t.name for t in await db.read(lambda c: members.list_tokens(c, NOW))] == ["new"]
    # the truststore holds every member, pending ones included
    assert [m.name for m in store.members()] == ["m1", "m2", "m3", "m4", "m5"]
    # OnHeartbeat with old and new roles
    assert hooks == [{
        "m1": RoleTransition("voter", "voter"), "m2": RoleTransition("voter", "voter"),
        "m3": RoleTransition("voter", "voter"), "m4": RoleTransition(PENDING, "stand-by")}]
    # one role change: the offline voter m3 is replaced by promoting the online stand-by
    assert result.change is not None
    assert fake.calls == [("change", node_id_for("m4"), Role.VOTER)]


async def test_round_skips(
    db: InlineDatabase, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await seed(db, {"m1": "voter", "m2": "voter", "m3": "voter"})
    fake = FakeMembership(ids("m1:V", "m2:V", "m3:V"), leader=node_id_for("m2"))
    net = FakeNet()
    hb, _ = make(db, tmp_path, fake, net, [])
    with trio.fail_after(100):
        assert (await hb.run_round()).skipped == "not the leader"
        fake.leader_id = node_id_for("m1")
        read = db.read

        async def closed(fn: Any, *, stale: bool = False) -> Any:
            raise DatabaseNotOpenError("Database is waiting for an upgrade")

        db.read = closed  # type: ignore[method-assign]
        assert (await hb.run_round()).skipped == "database not open"
        db.read = read  # type: ignore[method-assign]
        assert (await hb.run_round()).skipped == ""
        assert (await hb.run_round()).skipped == "heartbeated less than an interval ago"
        await trio.sleep(INTERVAL / 2)
        # half an interval later the leader was heartbeated too recently: skipped again
        again = await hb.run_round()
    assert again.skipped
    assert fake.calls == []  # 3 voters, all online: nothing to change
    assert len(net.received[addr(2)]) == 1


async def test_run_loop_is_periodic_and_survives_failures(
    db: InlineDatabase, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await seed(db, {"m1": "voter", "m2": "stand-by"})
    fake = FakeMembership(ids("m1:V", "m2:S"), leader=node_id_for("m1"))
    net = FakeNet()
    net.refusing.add(addr(2))
    hb, _ = make(db, tmp_path, fake, net, [])
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await nursery.start(hb.run)
            await trio.sleep(2.5 * INTERVAL)
            net.refusing.clear()
            await trio.sleep(2 * INTERVAL)
            nursery.cancel_scope.cancel()
    assert len(net.received[addr(2)]) == 2  # rounds at 0, 10, 20 refused; 30, 40 answered
    assert hb.last_round is not None and hb.last_round.answered == ("m2",)
    assert fake.calls == []  # two members: one voter and one stand-by is the target


async def test_roles_converge_over_rounds(
    db: InlineDatabase, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    names = [f"m{i}" for i in range(1, 6)]
    await seed(db, {n: ("voter" if n == "m1" else PENDING) for n in names})
    fake = FakeMembership(ids("m1:V", "m2:S", "m3:S", "m4:S", "m5:S"), node_id_for("m1"))
    hb, _ = make(db, tmp_path, fake, FakeNet(), [])
    with trio.fail_after(500):
        for _ in range(6):
            await hb.run_round()
            await trio.sleep(INTERVAL)
    assert len(fake.calls) == 2  # one change per round, then nothing
    roles = {r.name: r.role for r in await db.read(members.list_members)}
    assert sorted(roles.values()) == ["stand-by", "stand-by", "voter", "voter", "voter"]


async def test_caught_up_and_lock(
    db: InlineDatabase, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await seed(db, {"m1": "voter", "m2": "stand-by", "m3": "stand-by"})
    fake = FakeMembership(ids("m1:V", "m2:S", "m3:S"), leader=node_id_for("m1"))
    ready: set[int] = set()

    async def caught_up() -> Collection[int]:
        return ready

    hb = Heartbeat(name="m1", address=addr(1), db=db, membership=fake,
                   truststore=Truststore(tmp_path / "ts"), client_factory=FakeNet().factory,
                   wall_clock=wall, caught_up=caught_up, config=HeartbeatConfig(INTERVAL),
                   run_blocking=inline)
    with trio.fail_after(100):
        assert (await hb.run_round()).change is None  # nobody caught up
        ready.add(node_id_for("m3"))
        await trio.sleep(INTERVAL)
        result = await hb.run_round()
    assert result.change is not None and result.change.node_id == node_id_for("m3")


async def test_raft_addresses(db: InlineDatabase) -> None:
    await seed(db, {"m1": "voter", "m2": PENDING})
    assert await db.read(raft_addresses) == {node_id_for("m1"): addr(1),
                                             node_id_for("m2"): addr(2)}


def test_client_satisfies_protocol() -> None:
    factory: ClientFactory = lambda address: Client.tls(  # noqa: E731
        address, cert=pair_for("m1"), pinned=pair_for("m1").cert)
    assert callable(factory)


# -- the receiver --------------------------------------------------------------------


def trusted(n: int) -> TrustedMember:
    return TrustedMember(f"m{n}", addr(n), pair_for(f"m{n}").cert.decode())


async def test_receiver_replaces_truststore_and_triggers(tmp_path: Path) -> None:
    store = Truststore(tmp_path / "truststore")
    store.add(trusted(1))
    store.add(trusted(9))  # a removed member: must go
    calls: list[int] = []
    info = HeartbeatInfo(cluster_members={addr(i): trusted(i) for i in (1, 2, 3)},
                         max_schema_internal=6, max_schema_external=2, leader_address=addr(1))
    wire = HeartbeatInfo.from_dict(info.to_dict())
    assert wire.cluster_members == info.cluster_members
    with trio.fail_after(10):
        await receive_heartbeat(wire, truststore=store, own_versions=(6, 2), caller=trusted(1),
                                on_schema_behind=lambda: calls.append(1))
        assert [m.name for m in store.members()] == ["m1", "m2", "m3"] and calls == []
        await receive_heartbeat(wire, truststore=store, own_versions=(6, 1), caller=trusted(1),
                                on_schema_behind=lambda: calls.append(1))
        assert calls == [1]
        with pytest.raises(ForbiddenError):
            await receive_heartbeat(wire, truststore=store, own_versions=(6, 2), caller=None)
        with pytest.raises(ForbiddenError, match="claims"):
            await receive_heartbeat(wire, truststore=store, own_versions=(6, 2),
                                    caller=trusted(2))
        with pytest.raises(ValidationError):
            await receive_heartbeat(HeartbeatInfo(), truststore=store, own_versions=(6, 2),
                                    caller=trusted(1))
    assert [m.name for m in store.members()] == ["m1", "m2", "m3"]
    bad: object
    for bad in ([], {"cluster_members": []}, {"max_schema_internal": "1"},
                {"leader_address": 5}):
        with pytest.raises(ValidationError):
            HeartbeatInfo.from_dict(bad)


# -- member status -------------------------------------------------------------------


def row(name: str, *, internal: int = 6, external: int = 1, exts: tuple[str, ...] = ("a",),
        beat: datetime.datetime | None = NOW, role: str = "voter") -> MemberRow:
    return MemberRow(name, addr(int(name[1:])), "", internal, external, exts,
                     members.format_time(beat), role)


def test_member_statuses() -> None:
    later = NOW + datetime.timedelta(seconds=25)
    rows = [row("m1", beat=None), row("m2"), row("m3", beat=later), row("m4", beat=None,
                                                                     role=PENDING)]
    got = member_statuses(rows, now=later, interval=INTERVAL, own_name="m1")
    assert got == {"m1": MemberStatus.ONLINE, "m2": MemberStatus.UNREACHABLE,
                   "m3": MemberStatus.ONLINE, "m4": MemberStatus.UNREACHABLE}
    got = member_statuses(rows, now=later, interval=INTERVAL, own_name="m1",
                          reachable={"m2"})
    assert got["m2"] is MemberStatus.ONLINE and got["m3"] is MemberStatus.UNREACHABLE
    upgrading = [row("m1", external=2), row("m2", external=1), row("m3", external=2,
                                                                   exts=("a", "b"))]
    got = member_statuses(upgrading, now=NOW, interval=INTERVAL, own_name="m1")
    assert got == {"m1": MemberStatus.NEEDS_UPGRADE, "m2": MemberStatus.NEEDS_UPGRADE,
                   "m3": MemberStatus.UPGRADING}
    assert str(MemberStatus.NEEDS_UPGRADE) == "NEEDS UPGRADE"
