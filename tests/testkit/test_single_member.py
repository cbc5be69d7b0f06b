"""``open_cluster`` with one member: forming, the application's endpoint over mutual TLS,
stale reads of every member, kill and restart from the state directory, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _notes_app import notes_args

from microtrio import NoLeaderError, StateError, ValidationError
from microtrio.testing import open_cluster

CEILING = 60.0


async def test_one_member_serves_the_application_and_survives_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(1, tmp_path=tmp_path, args=notes_args) as cluster:
            (member,) = cluster.members
            assert member.name == "member1" and member.running
            assert member.address.startswith("127.0.0.1:") and not member.address.endswith(":0")
            assert cluster.leader() is member
            assert await cluster.wait_for_leader() is member
            assert (member.state_dir / "cluster.crt").exists()

            async with await member.client() as client:  # real mutual TLS
                assert await client.query("POST", "/1.0/notes", {"text": "a"}) == {"id": 1}
                assert await client.query("POST", "/1.0/notes", {"text": "b"}) == {"id": 2}
                assert await client.query("GET", "/1.0/notes") == ["a", "b"]
            index = await cluster.wait_replicated()
            assert index == member.applied_index > 0
            assert await cluster.read_all("SELECT text FROM notes ORDER BY id") == {
                "member1": [("a",), ("b",)]
            }

            await cluster.kill(member)
            assert not member.running and cluster.running() == []
            with pytest.raises(StateError):
                _ = member.database
            with pytest.raises(NoLeaderError):
                cluster.leader()

            await cluster.restart(member)
            assert member.running
            assert await member.read("SELECT count(*) FROM notes") == [(2,)]
            async with member.local_client() as client:
                assert await client.query("GET", "/1.0/notes") == ["a", "b"]
            await cluster.stop(member)
            assert not member.running
    assert not member.running


async def test_restart_of_a_running_member_and_members_view(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(1, tmp_path=tmp_path, names=["alpha"]) as cluster:
            member = cluster["alpha"]
            assert cluster[0] is member and len(cluster) == 1 and list(cluster) == [member]
            view = await cluster.members_view()
            assert [(m["name"], m["address"]) for m in view] == [("alpha", member.address)]
            address = member.address
            await cluster.restart(member)
            assert member.running and member.address == address
            assert cluster.leader() is member
            with pytest.raises(KeyError):
                cluster["nobody"]


@pytest.mark.parametrize(
    ("size", "names"), [(0, None), (2, ["a"]), (2, ["a", "a"])], ids=["empty", "short", "dup"]
)
async def test_open_cluster_refuses_bad_shapes(
    tmp_path: Path, size: int, names: list[str] | None
) -> None:
    with pytest.raises(ValidationError):
        async with open_cluster(size, tmp_path=tmp_path, names=names):
            pytest.fail("formed")  # pragma: no cover
