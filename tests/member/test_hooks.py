"""Hooks of one member: PreInit, PostBootstrap, OnStart, remote hooks, rollback and timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import microtrio
from microtrio._cluster import _members as members
from microtrio._hooks import HookRunner, HookType

from .conftest import CEILING, call, make_args, start_member
from .test_api import assert_error, assert_sync


class Recorder:
    """Hooks that record their calls; ``fail`` names hooks that raise once."""

    def __init__(self, fail: set[str] | None = None, hang: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = set(fail or ())
        self.hang = set(hang or ())

    async def _hit(self, name: str, value: Any) -> None:
        self.calls.append((name, value))
        if name in self.hang:
            self.hang.discard(name)
            await trio.sleep_forever()
        if name in self.fail:
            self.fail.discard(name)
            raise RuntimeError(f"{name} refused")

    def hooks(self) -> microtrio.Hooks:
        async def pre_init(s: microtrio.State, bootstrap: bool, config: Mapping[str, str]) -> None:
            await self._hit("pre_init", (s.name, bootstrap, dict(config)))

        async def post_bootstrap(s: microtrio.State, config: Mapping[str, str]) -> None:
            rows = await s.database.read(members.list_members)
            await self._hit("post_bootstrap", ([r.name for r in rows], dict(config)))

        async def on_start(s: microtrio.State) -> None:
            await self._hit("on_start", s.name)

        async def pre_remove(s: microtrio.State, force: bool) -> None:
            await self._hit("pre_remove", force)

        async def post_remove(s: microtrio.State, force: bool) -> None:
            await self._hit("post_remove", force)

        async def on_new_member(s: microtrio.State, new: microtrio.ClusterMemberLocal) -> None:
            await self._hit("on_new_member", new.name)

        async def on_config(s: microtrio.State, config: microtrio.DaemonConfig) -> None:
            await self._hit("on_daemon_config_update", config.name)

        return microtrio.Hooks(
            pre_init=pre_init,
            post_bootstrap=post_bootstrap,
            on_start=on_start,
            pre_remove=pre_remove,
            post_remove=post_remove,
            on_new_member=on_new_member,
            on_daemon_config_update=on_config,
        )

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


async def test_hooks_fire_in_order_with_their_arguments(state_dir: Path) -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, make_args(rec.hooks()), bootstrap=False)
            assert rec.calls == [("on_start", member.app.daemon.state.name)]  # type: ignore[union-attr]
            await member.app.new_cluster("member1", "127.0.0.1:0", {"k": "v"})
            assert rec.calls[1:] == [
                ("pre_init", ("member1", True, {"k": "v"})),
                ("post_bootstrap", (["member1"], {"k": "v"})),
            ]
            member.address = (await member.app.status())["address"]
            del rec.calls[:]
            cert = member.server_pair().cert.decode()
            for hook, body, expected in [
                ("pre-remove", {"force": True}, ("pre_remove", True)),
                ("post-remove", {}, ("post_remove", False)),
                (
                    "on-new-member",
                    {"new_member": {"name": "m2", "address": "127.0.0.1:2", "certificate": cert}},
                    ("on_new_member", "m2"),
                ),
                (
                    "on-daemon-config-update",
                    {"name": "m2", "address": "127.0.0.1:2", "servers": {}},
                    ("on_daemon_config_update", "m2"),
                ),
            ]:
                assert_sync(
                    *await call(
                        member, "POST", f"/core/internal/hooks/{hook}", json_body=body, via="tls"
                    )
                )
                assert rec.calls[-1] == expected
            assert_error(
                *await call(
                    member,
                    "POST",
                    "/core/internal/hooks/on-new-member",
                    json_body={"new_member": {"name": "bad_name"}},
                ),
                400,
            )
            assert len(rec.calls) == 4
        nursery.cancel_scope.cancel()


async def test_post_bootstrap_failure_rolls_back(state_dir: Path) -> None:
    rec = Recorder(fail={"post_bootstrap"})
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, make_args(rec.hooks()), bootstrap=False)
            body = {"name": "member1", "address": "127.0.0.1:0", "bootstrap": True}
            error = assert_error(*await call(member, "POST", "/core/control", json_body=body), 500)
            assert "post-bootstrap" in error and "refused" in error
            assert rec.names() == [
                "on_start",
                "pre_init",
                "post_bootstrap",
                "pre_remove",
                "on_start",
            ]
            assert ("pre_remove", True) in rec.calls
            status = await member.app.status()
            assert status["ready"] is False and status["address"] == ""
            assert not (state_dir / "daemon.yaml").exists()
            assert not (state_dir / "cluster.crt").exists()
            assert not (state_dir / "database" / "info.yaml").exists()
            assert list((state_dir / "truststore").iterdir()) == []
            # The fresh daemon can bootstrap again.
            await member.app.new_cluster("member1", "127.0.0.1:0")
            assert (await member.app.status())["ready"] is True
        nursery.cancel_scope.cancel()


async def test_pre_init_failure_leaves_the_member_uninitialised(state_dir: Path) -> None:
    rec = Recorder(fail={"pre_init"})
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, make_args(rec.hooks()), bootstrap=False)
            body = {"name": "member1", "address": "127.0.0.1:0", "bootstrap": True}
            assert_error(*await call(member, "POST", "/core/control", json_body=body), 500)
            assert rec.names() == ["on_start", "pre_init"]
            assert not (state_dir / "daemon.yaml").exists()
            assert (await member.app.status())["name"] != "member1"
        nursery.cancel_scope.cancel()


async def test_a_hanging_hook_is_bounded(state_dir: Path) -> None:
    rec = Recorder(hang={"post_bootstrap"})
    args = make_args(rec.hooks(), hook_timeout=0.3)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, args, bootstrap=False)
            body = {"name": "member1", "address": "127.0.0.1:0", "bootstrap": True}
            error = assert_error(*await call(member, "POST", "/core/control", json_body=body), 504)
            assert "timed out" in error
            assert "pre_remove" in rec.names()
            assert (await member.app.status())["address"] == ""
        nursery.cancel_scope.cancel()


async def test_on_start_failure_fails_the_start(state_dir: Path) -> None:
    rec = Recorder(fail={"on_start"})
    app = microtrio.App(state_dir, args=make_args(rec.hooks()))
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(microtrio.MicrotrioError, match="on-start"), flatten_subgroups=True
        ),
    ):
        await app.run()
    assert not (state_dir / "control.socket").exists()


async def test_hook_runner_maps_errors() -> None:
    async def boom(state: Any) -> None:
        raise ValueError("nope")

    state: Any = SimpleNamespace(name="m")
    runner = HookRunner(microtrio.Hooks(on_start=boom), timeout=1)
    with pytest.raises(microtrio.MicrotrioError, match="Hook on-start failed: nope"):
        await runner.run(HookType.ON_START, state)
    assert runner.has(HookType.ON_START) and not runner.has(HookType.PRE_JOIN)
    await runner.run(HookType.PRE_JOIN, state, {})
