"""A member's lifecycle: before init, init validation, restart, modes, locking, embedding,
shutdown, reset and token expiry."""

from __future__ import annotations

import base64
import datetime
import json
import stat
from pathlib import Path

import httpx
import pytest
import trio

import microtrio
from microtrio._certs import generate_cert_key_pair

from .conftest import CEILING, Member, call, make_args, start_member
from .test_api import assert_error, assert_sync


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_before_init(state_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, make_args(), bootstrap=False)
            meta = assert_sync(*await call(member, "GET", "/core/1.0"))
            assert isinstance(meta, dict)
            assert meta["ready"] is False and meta["address"] == ""
            assert assert_sync(*await call(member, "GET", "/core/1.0/ready")) == {}
            for method, path in [
                ("GET", "/core/1.0/cluster"),
                ("GET", "/core/control/tokens"),
                ("GET", "/core/internal/sql"),
                ("DELETE", "/core/1.0/tokens/x"),
            ]:
                error = assert_error(*await call(member, method, path), 503)
                assert error == "Database is not yet initialized"
            assert not (state_dir / "daemon.yaml").exists()
            # A malformed join token is refused before anything is written.
            join = {"name": "member2", "address": "127.0.0.1:1", "join_token": "abc"}
            error = assert_error(*await call(member, "POST", "/core/control", json_body=join), 400)
            assert "join token" in error.lower()
            assert not (state_dir / "daemon.yaml").exists()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "body",
    [
        {"name": "c/1", "address": "127.0.0.1:1", "bootstrap": True},
        {"name": "_x", "address": "127.0.0.1:1", "bootstrap": True},
        {"name": "x.", "address": "127.0.0.1:1", "bootstrap": True},
        {"name": "ok", "address": "localhost:1", "bootstrap": True},
        {"name": "ok", "address": "127.0.0.1", "bootstrap": True},
        {"name": "ok", "address": "127.0.0.1:1", "bootstrap": True, "join_token": "abc"},
        {"name": "ok", "address": "127.0.0.1:1"},
        {"name": "ok", "address": "127.0.0.1:1", "bootstrap": "yes"},
        {"name": "ok", "address": "127.0.0.1:1", "bootstrap": True, "config": {"a": 1}},
    ],
)
async def test_init_bad_input_changes_nothing(state_dir: Path, body: object) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, make_args(), bootstrap=False)
            assert_error(*await call(member, "POST", "/core/control", json_body=body), 400)
            meta = assert_sync(*await call(member, "GET", "/core/1.0"))
            assert isinstance(meta, dict) and meta["ready"] is False and meta["address"] == ""
            assert not (state_dir / "daemon.yaml").exists()
            assert not (state_dir / "cluster.crt").exists()
        nursery.cancel_scope.cancel()


async def test_restart_keeps_state_and_modes(state_dir: Path) -> None:
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            member = await start_member(nursery, state_dir, make_args())
            token = await member.app.new_join_token("member2")
            await member.app.sql("CREATE TABLE kept (v TEXT); INSERT INTO kept VALUES ('x')")
            await member.app.shutdown()  # run() returns by itself: the nursery ends
        assert not member.socket.exists()

        async with trio.open_nursery() as nursery:
            app = microtrio.App(state_dir, args=make_args())
            await nursery.start(app.run)
            again = Member(state_dir, member.address, app)
            status = await app.status()
            assert status["name"] == "member1" and status["address"] == member.address
            assert status["ready"] is True
            records = await app.list_join_tokens()
            assert [r["token"] for r in records] == [token]
            batch = await app.sql("SELECT v FROM kept")
            assert isinstance(batch, dict) and batch["Results"][0]["rows"] == [["x"]]
            # The core listener is back on the same address, with the same trust.
            meta = assert_sync(*await call(again, "GET", "/core/1.0/cluster", via="tls"))
            assert isinstance(meta, list) and meta[0]["status"] == "ONLINE"

            assert mode(state_dir) == 0o711
            assert mode(state_dir / "control.socket") == 0o660
            assert stat.S_ISSOCK((state_dir / "control.socket").stat().st_mode)
            for private in ("truststore", "database", "certificates"):
                assert mode(state_dir / private) == 0o700
            for key in ("server.key", "cluster.key"):
                assert mode(state_dir / key) == 0o600
            assert mode(state_dir / "daemon.yaml") == 0o644
            assert (state_dir / "database" / "info.yaml").exists()
            assert (state_dir / "truststore" / "member1.yaml").exists()

            # A second daemon on the same state directory is refused, the first unharmed.
            second = microtrio.App(state_dir, args=make_args())
            with pytest.raises(microtrio.StateError, match="another daemon is already running"):
                await second.run()
            assert (await app.status())["ready"] is True
            nursery.cancel_scope.cancel()


async def test_embedded_in_host_nursery_cancels_cleanly(state_dir: Path) -> None:
    with trio.fail_after(CEILING):
        host_ran = trio.Event()

        async def host_task() -> None:
            host_ran.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(host_task)  # a host task beside the member
            member = await start_member(nursery, state_dir, make_args())
            assert (await member.app.status())["ready"] is True
            nursery.cancel_scope.cancel()
        assert host_ran.is_set()
        assert not member.socket.exists()
        assert member.app.daemon is None
        # The lock was released: the member starts again at once.
        async with trio.open_nursery() as nursery:
            again = await start_member(nursery, state_dir, make_args(), bootstrap=False)
            assert (await again.app.status())["name"] == "member1"
            nursery.cancel_scope.cancel()


async def test_async_with_and_api_shutdown(state_dir: Path) -> None:
    with trio.fail_after(CEILING):
        app = microtrio.App(state_dir, args=make_args())
        async with app:
            await app.ready(timeout=10)
            await app.new_cluster("solo", "127.0.0.1:0")
            assert (await app.status())["name"] == "solo"
        assert not (state_dir / "control.socket").exists()

        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            async with app.local_client() as client:
                await client.shutdown()
            # run() really returns: the nursery closes without being cancelled.
        assert app.daemon is None


async def test_reset_returns_to_a_fresh_member(member: Member) -> None:
    with trio.fail_after(CEILING):
        daemon = member.app.daemon
        assert daemon is not None and daemon.reset_count == 0
        assert_error(*await call(member, "PUT", "/core/internal/cluster/other"), 400)
        assert_sync(*await call(member, "PUT", "/core/internal/cluster/member1"))
        await daemon.wait_reset(1)
        status = await member.app.status()
        assert status["ready"] is False and status["name"] != "member1"
        assert not (member.state_dir / "daemon.yaml").exists()
        assert not (member.state_dir / "cluster.crt").exists()
        assert list((member.state_dir / "truststore").iterdir()) == []
        await member.app.ready(timeout=10)
        await member.app.new_cluster("member9", "127.0.0.1:0")
        assert (await member.app.status())["name"] == "member9"


async def test_token_expiry_uses_the_injected_wall_clock(state_dir: Path) -> None:
    now = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    args = make_args(wall_clock=lambda: now[0])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, args)
            await member.app.new_join_token("short", datetime.timedelta(seconds=1))
            await member.app.new_join_token("forever")
            records = {r["name"]: r for r in await member.app.list_join_tokens()}
            assert records["short"]["expires_at"] == "2030-01-01T00:00:01.000000Z"
            assert records["forever"]["expires_at"] == "0001-01-01T00:00:00Z"
            now[0] += datetime.timedelta(seconds=2)
            assert [r["name"] for r in await member.app.list_join_tokens()] == ["forever"]
            # An expired token no longer blocks its name.
            token = await member.app.new_join_token("short")
            assert json.loads(base64.b64decode(token))["secret"]
        nursery.cancel_scope.cancel()


async def test_cluster_certificate_replacement_swaps_the_listener(member: Member) -> None:
    pair = generate_cert_key_pair("newcluster")
    old = member.cluster_cert()
    body = {"cert": pair.cert.decode(), "key": pair.key.decode(), "ca": ""}
    with trio.fail_after(CEILING):
        assert_sync(
            *await call(member, "PUT", "/core/1.0/cluster/certificates/cluster", json_body=body)
        )
        assert member.cluster_cert() == pair.cert
        assert mode(member.state_dir / "cluster.crt") == 0o664
        assert mode(member.state_dir / "cluster.key") == 0o600
        assert_sync(*await call(member, "GET", "/core/1.0/ready", via="tls", pinned=pair.cert))
        with pytest.raises(httpx.ConnectError):
            await call(member, "GET", "/core/1.0/ready", via="tls", pinned=old)


async def test_pre_init_listener(state_dir: Path) -> None:
    args = make_args(pre_init_listen_address="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, args, bootstrap=False)
            daemon = member.app.daemon
            assert daemon is not None
            address = daemon.listener_addresses["pre-init"]
            pinned = (state_dir / "server.crt").read_bytes()
            meta = assert_sync(
                *await call(member, "GET", "/core/1.0", via="tls", address=address, pinned=pinned)
            )
            assert isinstance(meta, dict) and meta["ready"] is False
            # Unlike microcluster, the pre-init listener does not trust everyone.
            assert_error(
                *await call(
                    member, "GET", "/core/1.0/ready", via="tls", address=address, pinned=pinned
                ),
                403,
            )
            await member.app.new_cluster("member1", "127.0.0.1:0")
            assert "pre-init" not in daemon.listener_addresses
            assert "core" in daemon.listener_addresses
        nursery.cancel_scope.cancel()


async def test_bootstrap_on_a_busy_address_rolls_back(state_dir: Path) -> None:
    busy = trio.socket.socket()
    with busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        host, port = busy.getsockname()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CEILING):
                member = await start_member(nursery, state_dir, make_args(), bootstrap=False)
                body = {"name": "member1", "address": f"{host}:{port}", "bootstrap": True}
                error = assert_error(
                    *await call(member, "POST", "/core/control", json_body=body), 503
                )
                assert f"{host}:{port}" in error
                status = await member.app.status()
                assert status["address"] == "" and status["ready"] is False
                assert not (state_dir / "daemon.yaml").exists()
                await member.app.new_cluster("member1", "127.0.0.1:0")
            nursery.cancel_scope.cancel()


async def test_server_certificate_replacement_only_before_init(state_dir: Path) -> None:
    args = make_args(pre_init_listen_address="127.0.0.1:0")
    pair = generate_cert_key_pair("member1")
    body = {"cert": pair.cert.decode(), "key": pair.key.decode()}
    path = "/core/1.0/cluster/certificates/server"
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, state_dir, args, bootstrap=False)
            daemon = member.app.daemon
            assert daemon is not None
            address = daemon.listener_addresses["pre-init"]
            assert_error(*await call(member, "PUT", path, json_body={"cert": "x", "key": "y"}), 400)
            assert_sync(*await call(member, "PUT", path, json_body=body))
            assert (state_dir / "server.crt").read_bytes() == pair.cert
            assert mode(state_dir / "server.key") == 0o600
            # The pre-init listener now presents the new certificate.
            assert_sync(
                *await call(
                    member, "GET", "/core/1.0", via="tls", address=address, pinned=pair.cert
                )
            )
            await member.app.new_cluster("member1", "127.0.0.1:0")
            assert (state_dir / "server.crt").read_bytes() == pair.cert  # name in its SANs
            error = assert_error(*await call(member, "PUT", path, json_body=body), 400)
            assert "before init" in error
        nursery.cancel_scope.cancel()
