"""The REST client against a tiny ASGI app on a real unix socket / TLS listener."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from microtrio import RemoteError, UnavailableError
from microtrio._api._envelope import sync_response
from microtrio._api._listener import serve_tcp, serve_unix
from microtrio._certs import CertKeyPair, SSLContextHolder
from microtrio._client import NOTIFIER_USER_AGENT, Client
from microtrio._errors import TimeoutError_


@pytest.fixture
async def unix_client(tmp_path: Path, probe: Any) -> AsyncIterator[Client]:
    path = tmp_path / "control.socket"
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_unix, probe, path, lifespan=False))
        async with Client.unix(path) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_query_returns_metadata_and_sends_json(unix_client: Client) -> None:
    with trio.fail_after(30):
        info = await unix_client.query("POST", "/core/x", {"a": [1, 2]}, params={"p": "1"})
    assert info["method"] == "POST" and info["path"] == "/core/x"
    assert info["body"] == {"a": [1, 2]}
    assert info["query"] == "p=1"
    assert info["headers"]["content-type"] == "application/json"
    assert info["headers"]["host"] == "control.socket"
    assert info["headers"]["user-agent"] == "microtrio"


async def test_target_and_notification_mode(unix_client: Client) -> None:
    with trio.fail_after(30):
        targeted = await unix_client.use_target("m2").query("GET", "/a", params={"x": "y"})
        notifier = unix_client.notifier("127.0.0.1:8443")
        notified = await notifier.query("GET", "/a")
        both = await notifier.use_target("m3").query("GET", "/a")
        plain = await unix_client.query("GET", "/a")  # parent unchanged
    assert targeted["query"] == "x=y&target=m2"
    assert notified["headers"]["user-agent"] == NOTIFIER_USER_AGENT
    assert notified["headers"]["x-lxd-forwarded-address"] == "127.0.0.1:8443"
    assert both["query"] == "target=m3"
    assert both["headers"]["user-agent"] == NOTIFIER_USER_AGENT
    assert plain["query"] == "" and "x-lxd-forwarded-address" not in plain["headers"]


async def test_error_envelope_becomes_remote_error(unix_client: Client) -> None:
    with trio.fail_after(30), pytest.raises(RemoteError) as info:
        await unix_client.query("GET", "/fail")
    assert info.value.status == 409 and str(info.value) == "already exists"


async def test_undecodable_non_200_becomes_remote_error(unix_client: Client) -> None:
    with trio.fail_after(30), pytest.raises(RemoteError) as info:
        await unix_client.query("GET", "/garbage")
    assert info.value.status == 502 and "bad gateway" in str(info.value)


async def test_connection_refused_is_unavailable(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with Client.unix(tmp_path / "nothing.socket") as client:
            with pytest.raises(UnavailableError, match="Cannot connect"):
                await client.status()
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        pair_free = f"127.0.0.1:{port}"
        from microtrio._certs import generate_cert_key_pair

        pin = generate_cert_key_pair("x").cert
        async with Client.tls(pair_free, cert=None, pinned=pin) as client:
            with pytest.raises(UnavailableError, match="Cannot connect"):
                await client.status()


async def test_timeout_maps_to_timeout_error(tmp_path: Path) -> None:
    async def hang(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep_forever()

    path = tmp_path / "s.sock"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, hang, path, lifespan=False))
            async with Client.unix(path) as client:
                with pytest.raises(TimeoutError_):
                    await client.query("GET", "/", timeout=0.2)
            nursery.cancel_scope.cancel()


async def test_mutual_tls_presents_cert_and_wrong_pin_is_refused(
    probe: Any, server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_tcp, probe, "127.0.0.1:0", SSLContextHolder(server_pair))
            )
            async with Client.tls(address, cert=client_pair, pinned=server_pair.cert) as client:
                info = await client.query("GET", "/core/1.0")
                assert info["certs"] == [client_pair.cert.decode()]
                assert info["headers"]["host"] == address
            async with Client.tls(address, cert=client_pair, pinned=other_pair.cert) as client:
                with pytest.raises(UnavailableError, match="pinned"):
                    await client.query("GET", "/core/1.0")
            nursery.cancel_scope.cancel()


Call = Callable[[Client], Awaitable[Any]]

HELPERS: list[tuple[Call, str, str, str, Any]] = [
    (lambda c: c.status(), "GET", "/core/1.0", "", None),
    (lambda c: c.ready(), "GET", "/core/1.0/ready", "", None),
    (lambda c: c.cluster_members(), "GET", "/core/1.0/cluster", "", None),
    (
        lambda c: c.remove_member("m2", force=True),
        "DELETE",
        "/core/1.0/cluster/m2",
        "force=1",
        None,
    ),
    (
        lambda c: c.add_token("m2", expire_after_ns=5),
        "POST",
        "/core/control/tokens",
        "",
        {"name": "m2", "expire_after": 5},
    ),
    (lambda c: c.list_tokens(), "GET", "/core/control/tokens", "", None),
    (lambda c: c.revoke_token("m2"), "DELETE", "/core/1.0/tokens/m2", "", None),
    (
        lambda c: c.bootstrap("m1", "127.0.0.1:8443", {"k": "v"}),
        "POST",
        "/core/control",
        "",
        {
            "bootstrap": True,
            "config": {"k": "v"},
            "join_token": "",
            "address": "127.0.0.1:8443",
            "name": "m1",
        },
    ),
    (
        lambda c: c.join("m2", "127.0.0.1:8444", "TOKEN"),
        "POST",
        "/core/control",
        "",
        {
            "bootstrap": False,
            "config": {},
            "join_token": "TOKEN",
            "address": "127.0.0.1:8444",
            "name": "m2",
        },
    ),
    (lambda c: c.shutdown(), "POST", "/core/control/shutdown", "", None),
    (lambda c: c.sql_dump(schema_only=True), "GET", "/core/internal/sql", "schema=1", None),
    (lambda c: c.sql_query("SELECT 1"), "POST", "/core/internal/sql", "", {"query": "SELECT 1"}),
    (
        lambda c: c.update_certificate("cluster", "C", "K"),
        "PUT",
        "/core/1.0/cluster/certificates/cluster",
        "",
        {"cert": "C", "key": "K", "ca": ""},
    ),
    (lambda c: c.servers(), "GET", "/core/1.0/daemon/servers", "", None),
    (
        lambda c: c.set_servers({"web": {"address": "127.0.0.1:9000"}}),
        "PUT",
        "/core/1.0/daemon/servers",
        "",
        {"web": {"address": "127.0.0.1:9000"}},
    ),
    (
        lambda c: c.add_trust("m2", "127.0.0.1:8444", "PEM"),
        "POST",
        "/core/internal/truststore",
        "",
        {"name": "m2", "address": "127.0.0.1:8444", "certificate": "PEM"},
    ),
    (lambda c: c.remove_trust("m2"), "DELETE", "/core/internal/truststore/m2", "", None),
    (
        lambda c: c.reset_member("m2", force=True),
        "PUT",
        "/core/internal/cluster/m2",
        "force=1",
        None,
    ),
    (
        lambda c: c.request_admission({"name": "m2"}),
        "POST",
        "/core/internal/cluster",
        "",
        {"name": "m2"},
    ),
]


async def test_typed_helpers_hit_the_core_endpoints(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str, Any]] = []

    async def recorder(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive()).get("body", b"")
        seen.append(
            (
                scope["method"],
                scope["path"],
                scope["query_string"].decode(),
                json.loads(body) if body else None,
            )
        )
        status, headers, payload = sync_response({"text": "DUMP"})
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": payload})

    path = tmp_path / "s.sock"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, recorder, path, lifespan=False))
            async with Client.unix(path) as client:
                for call, *_ in HELPERS:
                    await call(client)
                assert await client.sql_dump() == "DUMP"
            nursery.cancel_scope.cancel()
    assert seen[: len(HELPERS)] == [tuple(expected) for _, *expected in HELPERS]


async def test_wait_ready_polls_until_ready(tmp_path: Path) -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        await receive()
        calls += 1
        from microtrio._api._envelope import error_response

        status, headers, body = sync_response() if calls >= 3 else error_response(503)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    path = tmp_path / "s.sock"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, app, path, lifespan=False))
            async with Client.unix(path) as client:
                await client.wait_ready(poll_interval=0.01)
            nursery.cancel_scope.cancel()
    assert calls == 3


async def test_cancelled_tls_handshake_closes_the_socket(
    server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    """A request cancelled while its TLS handshake waits closes its socket at once (the
    server sees the end of the stream), instead of leaving it to the garbage collector."""
    accepted: trio.MemorySendChannel[trio.SocketStream]
    accepted, incoming = trio.open_memory_channel[trio.SocketStream](1)

    async def mute(stream: trio.SocketStream) -> None:  # accepts, never answers TLS
        await accepted.send(stream)
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with Client.tls(
                f"127.0.0.1:{port}", cert=client_pair, pinned=server_pair.cert
            ) as client:
                async with trio.open_nursery() as requests:
                    requests.start_soon(client.query, "GET", "/core/1.0")
                    server_side = await incoming.receive()
                    assert await server_side.receive_some(65536)  # the ClientHello
                    requests.cancel_scope.cancel()
                assert await server_side.receive_some(65536) == b""  # closed by the client
            nursery.cancel_scope.cancel()
