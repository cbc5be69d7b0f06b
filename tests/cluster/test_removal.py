"""Member removal on the leader (reference 7.5) and the leadership hand-over on shutdown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from microtrio._cluster import _members as members
from microtrio._cluster._roles import Removal, ReplicationMembership, hand_over_leadership
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._errors import BadRequestError, NotFoundError, RemoteError, UnavailableError
from microtrio._replication import LeaderInfo, RaftReplication, node_id_for
from microtrio.raft import ConfState, ProgressState, ProgressStatus, Role, StateRole, Status

from .conftest import FakeMembership, InlineDatabase, inline, pair_for

V, S = Role.VOTER, Role.STANDBY


def addr(name: str) -> str:
    return f"127.0.0.1:{9000 + int(name[1:])}"


class Net:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.dead: set[str] = set()
        self.failing: set[str] = set()

    def factory(self, address: str) -> Client:
        return Client(address, self)


class Client:
    def __init__(self, address: str, net: Net) -> None:
        self.address, self.net = address, net

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        name = "m" + self.address.rsplit(":", 1)[1][-1]
        if name in self.net.dead:
            raise UnavailableError(f"Cannot connect to {self.address}")
        if name in self.net.failing and "hooks" in path:
            raise RemoteError("hook failed", 500)
        suffix = "?force=1" if params == {"force": "1"} else ""
        self.net.log.append((name, method, path + suffix))
        return None

    async def aclose(self) -> None:
        pass


def setup(tmp_path: Path, roles: Mapping[str, Role], own: str, net: Net
          ) -> tuple[Removal, InlineDatabase, FakeMembership, Truststore, list[bool]]:
    db = InlineDatabase()
    (tmp_path / own).mkdir(parents=True, exist_ok=True)
    store = Truststore(tmp_path / own)
    with db.conn:
        for name, role in roles.items():
            members.insert_member(db.conn, name=name, address=addr(name),
                                  certificate=pair_for(name).cert.decode(), schema_internal=6,
                                  schema_external=0, extensions=[], role=str(role))
            store.add(TrustedMember(name, addr(name), pair_for(name).cert.decode()))
    fake = FakeMembership({node_id_for(n): r for n, r in roles.items()}, node_id_for(own))
    post: list[bool] = []

    async def post_remove(force: bool) -> None:
        post.append(force)

    removal = Removal(own_name=own, db=db, membership=fake, truststore=store,
                      client_factory=net.factory, post_remove=post_remove,
                      node_id=node_id_for, run_blocking=inline)
    return removal, db, fake, store, post


async def names(db: InlineDatabase) -> list[str]:
    return [r.name for r in await db.read(members.list_members)]


async def test_remove_a_member(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    net = Net()
    removal, db, fake, store, post = setup(tmp_path, {"m1": V, "m2": V, "m3": S}, "m1", net)
    with trio.fail_after(60):
        outcome = await removal.remove("m3")
    assert outcome.removed and outcome.warnings == ()
    assert await names(db) == ["m1", "m2"]
    assert fake.calls == [("remove", node_id_for("m3"), None)]
    assert store.by_name("m3") is None
    assert net.log == [
        ("m3", "POST", "/core/internal/hooks/pre-remove"),
        ("m2", "DELETE", "/core/internal/truststore/m3"),
        ("m3", "PUT", "/core/internal/cluster/m3"),
        ("m2", "POST", "/core/internal/hooks/post-remove"),
    ]
    assert post == [False]


async def test_remove_the_leader_hands_over_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net()
    removal, db, fake, _, post = setup(tmp_path, {"m1": V, "m2": V, "m3": V}, "m1", net)
    with trio.fail_after(60):
        outcome = await removal.remove("m1")
    assert not outcome.removed and outcome.moved_to == node_id_for("m2")
    assert fake.calls == [("transfer", node_id_for("m2"), None)]
    assert await names(db) == ["m1", "m2", "m3"] and net.log == [] and post == []


async def test_two_member_cluster_survives_removal_of_either(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net()
    removal, db, fake, _, _ = setup(tmp_path, {"m1": V, "m2": S}, "m1", net)
    with trio.fail_after(60):
        outcome = await removal.remove("m1")  # the leader, only voter: promote, hand over
    assert outcome.moved_to == node_id_for("m2")
    assert fake.calls == [("change", node_id_for("m2"), V), ("transfer", node_id_for("m2"),
                                                              None)]
    # the request goes on at the new leader; the old one is gone already (forced)
    net2 = Net()
    net2.dead.add("m1")
    removal2, db2, fake2, store2, post2 = setup(tmp_path, {"m1": V, "m2": V}, "m2", net2)
    with trio.fail_after(60):
        outcome = await removal2.remove("m1", force=True)
    assert outcome.removed and len(outcome.warnings) == 2  # PreRemove and reset failed
    assert await names(db2) == ["m2"]
    assert fake2.conf == {node_id_for("m2"): V} and post2 == [True]
    # and the stand-by of a two-member cluster can simply go
    removal3, db3, fake3, _, _ = setup(tmp_path / "3", {"m1": V, "m2": S}, "m1", Net())
    with trio.fail_after(60):
        assert (await removal3.remove("m2")).removed
    assert fake3.conf == {node_id_for("m1"): V}


async def test_failed_pre_remove_aborts_unless_forced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net()
    net.failing.add("m3")
    removal, db, fake, store, post = setup(tmp_path, {"m1": V, "m2": V, "m3": V}, "m1", net)
    with trio.fail_after(60):
        with pytest.raises(RemoteError):
            await removal.remove("m3")
        assert await names(db) == ["m1", "m2", "m3"] and fake.calls == []
        assert store.by_name("m3") is not None and post == []
        outcome = await removal.remove("m3", force=True)
    assert outcome.removed and await names(db) == ["m1", "m2"]


async def test_remove_with_address(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """``?address=`` (late-v3): it must match the member's; and it removes the leftovers
    of a member that has no row (here m4: in Raft and trusted, its join never finished)."""
    net = Net()
    removal, db, fake, store, post = setup(tmp_path, {"m1": V, "m2": V, "m3": S}, "m1", net)
    fake.conf[node_id_for("m4")] = Role.SPARE
    store.add(TrustedMember("m4", addr("m4"), pair_for("m4").cert.decode()))
    with trio.fail_after(60):
        with pytest.raises(BadRequestError, match="not 127.0.0.1:9009"):
            await removal.remove("m3", address="127.0.0.1:9009")
        assert await names(db) == ["m1", "m2", "m3"] and fake.calls == [] and net.log == []
        with pytest.raises(NotFoundError):  # no row and no address: nothing to go by
            await removal.remove("m4")
        with pytest.raises(NotFoundError):  # an address, but nothing of m7 anywhere
            await removal.remove("m7", address=addr("m7"))
        assert fake.calls == [] and net.log == []
        outcome = await removal.remove("m4", address=addr("m4"), force=True)
        assert outcome.removed
        assert fake.calls == [("remove", node_id_for("m4"), None)]
        assert store.by_name("m4") is None and await names(db) == ["m1", "m2", "m3"]
        assert ("m4", "PUT", "/core/internal/cluster/m4?force=1") in net.log
        assert post == [True]
        outcome = await removal.remove("m3", address=addr("m3"))
    assert outcome.removed and await names(db) == ["m1", "m2"]


async def test_removal_refusals(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    removal, _, _, _, _ = setup(tmp_path, {"m1": V}, "m1", Net())
    with trio.fail_after(60):
        with pytest.raises(NotFoundError):
            await removal.remove("m7")
        with pytest.raises(BadRequestError, match="last"):
            await removal.remove("m1")


async def test_hand_over_leadership(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeMembership({1: V, 2: V, 3: V}, leader=1)
    with trio.fail_after(60):
        assert await hand_over_leadership(fake, 2) is None  # not the leader
        fake.fail = UnavailableError("no voter")
        assert await hand_over_leadership(fake, 1) is None
        fake.fail = None
        original = fake.transfer_leadership

        async def auto(to: int | None) -> int:
            return await original(2 if to is None else to)

        fake.transfer_leadership = auto  # type: ignore[method-assign]
        assert await hand_over_leadership(fake, 1) == 2
        assert fake.leader() == 2

        async def stuck(to: int | None) -> int:
            await trio.sleep_forever()
            raise AssertionError

        fake.leader_id = 1
        fake.transfer_leadership = stuck  # type: ignore[method-assign]
        start = trio.current_time()
        assert await hand_over_leadership(fake, 1, timeout=3) is None
        assert trio.current_time() - start == pytest.approx(3)


class FakeReplication:
    """Just enough of RaftReplication for the adapter."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def add_member(self, node_id: int, address: str, role: Role) -> None:
        self.calls.append(("add", node_id, address, role))

    async def promote(self, node_id: int) -> None:
        self.calls.append(("promote", node_id))

    async def demote(self, node_id: int, role: Role) -> None:
        self.calls.append(("demote", node_id, role))

    async def remove_member(self, node_id: int) -> None:
        self.calls.append(("remove", node_id))

    async def transfer_leadership(self, to: int | None = None) -> int:
        return 2 if to is None else to

    def leader(self) -> LeaderInfo:
        return LeaderInfo(1, "127.0.0.1:1")

    async def status(self) -> Status:
        progress = {
            2: ProgressStatus(match=100, next=101, state=ProgressState.REPLICATE,
                              recent_active=True),
            3: ProgressStatus(match=10, next=11, state=ProgressState.PROBE,
                              recent_active=False),
        }
        return Status(id=1, term=3, vote=1, commit=100, applied=100, leader_id=1,
                      role=StateRole.LEADER, conf=ConfState.from_dict({1: V, 2: V, 3: S}),
                      first_index=1, last_index=100, progress=progress)


async def test_replication_adapter() -> None:
    fake = FakeReplication()
    adapter = ReplicationMembership(cast(RaftReplication, fake))
    with trio.fail_after(10):
        await adapter.add_member(3, "127.0.0.1:3", S)
        await adapter.change_role(3, V)
        await adapter.change_role(3, Role.SPARE)
        await adapter.remove_member(3)
        assert await adapter.transfer_leadership(None) == 2
        assert adapter.leader() == 1
        assert await adapter.configuration() == {1: V, 2: V, 3: S}
        assert await adapter.caught_up(max_lag=50) == {1, 2}
        assert await adapter.caught_up(max_lag=90) == {1, 2, 3}
        assert await adapter.recently_active() == {1, 2}
    assert fake.calls == [("add", 3, "127.0.0.1:3", S), ("promote", 3),
                          ("demote", 3, Role.SPARE), ("remove", 3)]
