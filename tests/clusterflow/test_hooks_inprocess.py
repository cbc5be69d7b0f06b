"""Hook order and arguments (reference section 5) on every member of a real cluster, for
bootstrap, join, removal with and without force, and heartbeats."""

from __future__ import annotations

from pathlib import Path

import trio

from ._flows import form_cluster, leader_of, wait_roles
from .conftest import CEILING, Recorder

ONLINE_VOTER = ("voter", "ONLINE")


def without_heartbeats(calls: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Lifecycle hooks only (OnStart ran before init, under the host name)."""
    return [c for c in calls if c[0] not in ("on-heartbeat", "on-start")]


async def test_hook_order_and_arguments(tmp_path: Path) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            nodes = await form_cluster(nursery, tmp_path, 3, recorder)
            m1, m2, m3 = nodes
            await wait_roles(m1.app, [ONLINE_VOTER] * 3)
            assert await leader_of(nodes) is m1

            assert without_heartbeats(recorder.of("member1")) == [
                ("pre-init", (True, {"k": "v"})),
                ("post-bootstrap", ({"k": "v"},)),
                ("on-new-member", ("member2",)),
                ("on-new-member", ("member3",)),
            ]
            joined = [
                ("pre-init", (False, {"j": "1"})),
                ("pre-join", ({"j": "1"},)),
                ("post-join", ({"j": "1"},)),
            ]
            assert without_heartbeats(recorder.of("member3")) == joined
            # member2 is told about member3 after its own join finished.
            assert without_heartbeats(recorder.of("member2")) == [
                *joined, ("on-new-member", ("member3",))]
            # Every existing member runs OnNewMember after the joiner's PreJoin and before
            # its PostJoin.
            flat = recorder.calls
            pre_join_3 = flat.index(("member3", "pre-join", ({"j": "1"},)))
            post_join_3 = flat.index(("member3", "post-join", ({"j": "1"},)))
            for name in ("member1", "member2"):
                assert pre_join_3 < flat.index((name, "on-new-member", ("member3",))) \
                    < post_join_3
            # OnStart ran once on every member at its start (form_cluster starts all three
            # daemons before the bootstrap), before init: under the host name then.
            assert [c[1] for c in flat[:3]] == ["on-start"] * 3
            assert [c for c in flat if c[1] == "on-start"] == flat[:3]
            assert all(c[0] not in ("member1", "member2", "member3") for c in flat[:3])

            # Heartbeats: OnHeartbeat runs on the leader only, with {name: (old, new)}.
            beats = [(n, a) for n, h, a in recorder.calls if h == "on-heartbeat"]
            assert beats and {n for n, _ in beats} == {"member1"}
            last = beats[-1][1][0]
            assert set(last) == {"member1", "member2", "member3"}
            assert all(new == "voter" for _, new in last.values())
            promoted = [a[0] for _, a in beats if a[0].get("member2", ("", ""))[0] == "PENDING"]
            assert promoted and promoted[0]["member2"][1] in ("stand-by", "voter")

            # Removal without force, then with force.
            start = len(recorder.calls)
            async with m1.app.local_client() as client:
                await client.remove_member("member3")
                await wait_roles(m1.app, [ONLINE_VOTER, ("stand-by", "ONLINE")])
                await client.remove_member("member2", force=True)
            removal = [(n, h, a) for n, h, a in recorder.calls[start:]
                       if h in ("pre-remove", "post-remove")]
            assert removal == [
                ("member3", "pre-remove", (False,)),
                ("member1", "post-remove", (False,)),
                ("member2", "post-remove", (False,)),
                ("member2", "pre-remove", (True,)),
                ("member1", "post-remove", (True,)),
            ]
            # A removed member comes back as a fresh, uninitialised daemon: OnStart runs
            # again there (under the host name), after its PreRemove.
            for node in (m3, m2):
                daemon = node.app.daemon
                assert daemon is not None
                await daemon.wait_reset(1)
            after = recorder.calls[start:]
            fresh = [i for i, c in enumerate(after) if c[1] == "on-start"]
            assert len(fresh) == 2
            assert all(after[i][0] not in ("member1", "member2", "member3") for i in fresh)
            assert after.index(("member3", "pre-remove", (False,))) < fresh[0]
            assert after.index(("member2", "pre-remove", (True,))) < fresh[1]
            # Nothing else ran on the removed members; heartbeats only on the leader.
            assert {h for n, h, _ in after if n in ("member2", "member3")} == {
                "pre-remove", "post-remove"}
            assert {n for n, h, _ in after if h == "on-heartbeat"} <= {"member1"}
        nursery.cancel_scope.cancel()
