"""Application servers (reference 1.6): core API endpoints, their own listener, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from quart import Request

import microtrio
from microtrio import Endpoint, EndpointAction, Resources, Server
from microtrio._daemon import Daemon

from .conftest import CEILING, Member, call, make_args, start_member
from .test_api import assert_error, assert_sync


async def hello(state: microtrio.State, request: Request) -> Any:
    return {
        "member": state.name,
        "has_ext": state.has_extension("app_ext"),
        "method": request.method,
    }


async def item(state: microtrio.State, request: Request) -> Any:
    return {"id": (request.view_args or {})["id"]}


async def teapot(state: microtrio.State, request: Request) -> Any:
    raise microtrio.ConflictError("already brewing")


async def deny(state: microtrio.State, request: Request) -> None:
    raise microtrio.ForbiddenError("access handler says no")


def app_servers() -> dict[str, Server]:
    core = Server(
        core_api=True,
        serve_unix=True,
        resources=[
            Resources(
                "1.0",
                [
                    Endpoint("hello", get=EndpointAction(hello, allow_untrusted=True)),
                    Endpoint("items/{id}", get=EndpointAction(item), post=EndpointAction(teapot)),
                    Endpoint("gated", get=EndpointAction(item, access_handler=deny)),
                ],
            )
        ],
    )
    extra = Server(
        address="127.0.0.1:0",
        resources=[Resources("x", [Endpoint("ping", get=EndpointAction(hello))])],
    )
    return {"app": core, "extra": extra}


@pytest.fixture
async def app_member(state_dir: Path) -> Any:
    args = make_args(servers=app_servers(), api_extensions=["app_ext"])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            found = await start_member(nursery, state_dir, args)
        yield found
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("via", ["unix", "tls"])
async def test_core_api_endpoints(app_member: Member, via: str) -> None:
    meta = assert_sync(*await call(app_member, "GET", "/1.0/hello", via=via))
    assert meta == {"member": "member1", "has_ext": True, "method": "GET"}
    assert assert_sync(*await call(app_member, "GET", "/1.0/items/42", via=via)) == {"id": "42"}
    error = assert_error(*await call(app_member, "POST", "/1.0/items/42", via=via), 409)
    assert error == "already brewing"
    assert_error(*await call(app_member, "DELETE", "/1.0/items/42", via=via), 501)
    assert_error(*await call(app_member, "GET", "/1.0/gated", via=via), 403)
    assert_error(*await call(app_member, "GET", "/1.0/items", via=via), 404)


async def test_core_api_trust(app_member: Member) -> None:
    assert_sync(*await call(app_member, "GET", "/1.0/hello", via="tls", no_cert=True))
    assert_error(*await call(app_member, "GET", "/1.0/items/1", via="tls", no_cert=True), 403)


async def test_additional_server_listener(app_member: Member) -> None:
    daemon = app_member.app.daemon
    assert daemon is not None
    address = daemon.listener_addresses["extra"]
    pinned = app_member.cluster_cert()  # no dedicated certificate: the cluster one
    meta = assert_sync(
        *await call(app_member, "GET", "/x/ping", via="tls", address=address, pinned=pinned)
    )
    assert isinstance(meta, dict) and meta["member"] == "member1"
    # Its own resources only, and trust is decided the same way.
    assert_error(
        *await call(app_member, "GET", "/core/1.0", via="tls", address=address, pinned=pinned),
        404,
    )
    assert_error(
        *await call(
            app_member, "GET", "/x/ping", via="tls", address=address, pinned=pinned, no_cert=True
        ),
        403,
    )
    servers = assert_sync(*await call(app_member, "GET", "/core/1.0/daemon/servers"))
    assert servers == {"extra": {"address": "127.0.0.1:0"}}
    # Replace the servers map: the listener stops when its address is cleared.
    assert_sync(
        *await call(
            app_member, "PUT", "/core/1.0/daemon/servers", json_body={"extra": {"address": ""}}
        )
    )
    assert "extra" not in daemon.listener_addresses
    assert assert_sync(*await call(app_member, "GET", "/core/1.0/daemon/servers")) == {
        "extra": {"address": ""}
    }


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            {"core": Server(core_api=True, resources=[Resources("1.0", [Endpoint("a")])])},
            "reserved",
        ),
        ({"bad_name": Server(resources=[Resources("1.0", [Endpoint("a")])])}, "Invalid"),
        ({"s": Server()}, "no resources"),
        ({"s": Server(resources=[Resources("1.0")])}, "no endpoints"),
        ({"s": Server(core_api=True, resources=[Resources("core", [Endpoint("a")])])}, "core"),
        (
            {"s": Server(serve_unix=True, resources=[Resources("1.0", [Endpoint("a")])])},
            "serve_unix",
        ),
        (
            {
                "s": Server(
                    core_api=True,
                    address="127.0.0.1:1",
                    resources=[Resources("1.0", [Endpoint("a")])],
                )
            },
            "address",
        ),
        (
            {
                "s": Server(core_api=True, resources=[Resources("1.0", [Endpoint("a/{x}")])]),
                "t": Server(core_api=True, resources=[Resources("1.0", [Endpoint("a/{y}")])]),
            },
            "duplicate",
        ),
        (
            {
                "s": Server(address="127.0.0.1:7", resources=[Resources("1.0", [Endpoint("a")])]),
                "t": Server(address="127.0.0.1:7", resources=[Resources("1.0", [Endpoint("a")])]),
            },
            "in use",
        ),
    ],
)
def test_server_validation(tmp_path: Path, servers: dict[str, Server], message: str) -> None:
    with pytest.raises(microtrio.ValidationError, match=message):
        Daemon(tmp_path, make_args(servers=servers))


def test_version_is_required(tmp_path: Path) -> None:
    with pytest.raises(microtrio.ValidationError, match="version"):
        Daemon(tmp_path, microtrio.DaemonArgs(version=""))


async def test_pre_init_servers_and_dedicated_certificates(state_dir: Path) -> None:
    early = Endpoint("early", get=EndpointAction(hello), allowed_before_init=True)
    late = Endpoint("late", get=EndpointAction(hello), allowed_before_init=True)
    servers = {
        "pre": Server(
            core_api=True, serve_unix=True, pre_init=True, resources=[Resources("1.0", [early])]
        ),
        "post": Server(core_api=True, serve_unix=True, resources=[Resources("1.0", [late])]),
        "own": Server(
            address="127.0.0.1:0",
            dedicated_certificate=True,
            resources=[Resources("own", [Endpoint("ping", get=EndpointAction(hello))])],
        ),
    }
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(
                nursery, state_dir, make_args(servers=servers), bootstrap=False
            )
            assert_sync(*await call(member, "GET", "/1.0/early"))
            error = assert_error(*await call(member, "GET", "/1.0/late"), 503)
            assert error == "Database is not yet initialized"
            await member.app.new_cluster("member1", "127.0.0.1:0")
            member.address = (await member.app.status())["address"]
            assert_sync(*await call(member, "GET", "/1.0/late"))
            assert_sync(*await call(member, "GET", "/1.0/late", via="tls"))

            dedicated = (state_dir / "certificates" / "own.crt").read_bytes()
            assert dedicated != member.cluster_cert()
            assert (state_dir / "certificates" / "own.key").stat().st_mode & 0o077 == 0
            daemon = member.app.daemon
            assert daemon is not None
            address = daemon.listener_addresses["own"]
            assert_sync(
                *await call(
                    member, "GET", "/own/ping", via="tls", address=address, pinned=dedicated
                )
            )
            # The App's own remote client: presents server.crt, pins cluster.crt.
            async with await member.app.remote_client(member.address) as client:
                status = await client.status()
                assert status["name"] == "member1"
                assert (await client.cluster_members())[0]["status"] == "ONLINE"
        nursery.cancel_scope.cancel()
