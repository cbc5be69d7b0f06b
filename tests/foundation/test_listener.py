"""The listener seam: every request's scope says which listener it came through and, for
TLS, which client certificate was presented (HTTP and websocket alike)."""

from __future__ import annotations

import json
import os
import ssl
import stat
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from microtrio import UnavailableError
from microtrio._api._envelope import sync_response
from microtrio._api._listener import is_trusted_scope, serve_tcp, serve_unix
from microtrio._certs import CertKeyPair, SSLContextHolder, client_ssl_context
from microtrio._client import Client
from microtrio._cluster._truststore import TrustedMember, Truststore

LOCAL = "127.0.0.1:0"


async def test_tls_request_with_client_certificate(
    probe: Any, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, SSLContextHolder(server_pair))
            host, port = address.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0  # port 0 was resolved
            async with Client.tls(address, cert=client_pair, pinned=server_pair.cert) as client:
                info = await client.query("GET", "/core/1.0")
            assert info["kind"] == "tls"
            assert info["certs"] == [client_pair.cert.decode()]
            nursery.cancel_scope.cancel()


async def test_tls_request_without_client_certificate(probe: Any, server_pair: CertKeyPair) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, SSLContextHolder(server_pair))
            async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
                info = await client.query("GET", "/core/1.0")
            assert info["kind"] == "tls" and info["certs"] == []
            nursery.cancel_scope.cancel()


async def test_unix_request_has_no_tls_extension(probe: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "control.socket")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_unix, probe, path) == path
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            async with Client.unix(path) as client:
                info = await client.query("GET", "/core/1.0")
            assert info == {**info, "kind": "unix", "certs": None}
            nursery.cancel_scope.cancel()
    assert not await trio.Path(path).exists()  # removed on exit


async def test_websocket_gets_the_same_extension(
    probe: Any, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, SSLContextHolder(server_pair))
            host, port = address.rsplit(":", 1)
            for pair in (client_pair, None):
                context = client_ssl_context(pair, server_pair.cert)
                async with trio_websocket.open_websocket(
                    host, int(port), "/raft", use_ssl=context
                ) as ws:
                    info = json.loads(await ws.get_message())
                assert info["kind"] == "tls"
                assert info["certs"] == ([pair.cert.decode()] if pair else [])
            nursery.cancel_scope.cancel()


def _trust_app(truststore: Truststore, expected_host: str | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        trusted = is_trusted_scope(scope, truststore, expected_host=expected_host)
        status, headers, body = sync_response({"trusted": trusted})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def test_trust_decision_over_real_connections(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path / "truststore")
    store.add(TrustedMember("cli.example", "127.0.0.1:1", client_pair.cert.decode()))
    app = _trust_app(store)
    sock = str(tmp_path / "control.socket")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_tcp, app, LOCAL, SSLContextHolder(server_pair), lifespan=False)
            )
            await nursery.start(partial(serve_unix, app, sock, lifespan=False))
            results = {}
            for label, pair in (("trusted", client_pair), ("other", other_pair), ("none", None)):
                async with Client.tls(address, cert=pair, pinned=server_pair.cert) as client:
                    results[label] = (await client.query("GET", "/"))["trusted"]
            async with Client.unix(sock) as client:
                results["unix"] = (await client.query("GET", "/"))["trusted"]
            nursery.cancel_scope.cancel()
    assert results == {"trusted": True, "other": False, "none": False, "unix": True}


async def test_trust_check_refuses_what_it_cannot_see(
    tmp_path: Path, client_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path)
    store.add(TrustedMember("cli.example", "127.0.0.1:1", client_pair.cert.decode()))
    pem = client_pair.cert.decode()
    tls = {"client_cert_chain": [pem]}
    assert not is_trusted_scope({"type": "http"}, store)  # e.g. served by plain hypercorn
    assert not is_trusted_scope({"type": "http", "extensions": {"tls": tls}}, store)
    ours = {"microtrio": {"listener": "tls"}}
    assert not is_trusted_scope({"type": "http", "extensions": ours}, store)
    assert not is_trusted_scope(
        {"type": "http", "extensions": {**ours, "tls": {"client_cert_chain": None}}}, store
    )
    good = {"type": "http", "extensions": {**ours, "tls": tls}, "headers": []}
    assert is_trusted_scope(good, store)
    host = {**good, "headers": [(b"host", b"127.0.0.1:8443")]}
    assert is_trusted_scope(host, store, expected_host="127.0.0.1:8443")
    assert not is_trusted_scope(host, store, expected_host="127.0.0.1:9999")
    assert not is_trusted_scope(good, store, expected_host="127.0.0.1:8443")


async def test_shutdown_trigger_drains_and_returns(server_pair: CertKeyPair) -> None:
    stop = trio.Event()
    release = trio.Event()
    entered = trio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        await release.wait()
        status, headers, body = sync_response("done")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    finished = trio.Event()
    answers: list[Any] = []

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        await serve_tcp(
            slow_app,
            LOCAL,
            SSLContextHolder(server_pair),
            lifespan=False,
            shutdown_trigger=stop.wait,
            graceful_timeout=20,
            task_status=task_status,
        )
        finished.set()

    async def request(address: str) -> None:
        async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
            answers.append(await client.query("GET", "/slow"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve)
            nursery.start_soon(request, address)
            await entered.wait()
            stop.set()  # shutdown while a request is in flight
            await trio.testing.wait_all_tasks_blocked()
            assert not finished.is_set()
            # while draining, new connections are refused at once
            with pytest.raises(UnavailableError, match="Cannot connect"):
                async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
                    await client.query("GET", "/")
            release.set()
        assert finished.is_set() and answers == ["done"]
        with pytest.raises(UnavailableError):  # not listening any more
            async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
                await client.query("GET", "/")


async def test_address_in_use_and_live_unix_socket_are_refused(
    probe: Any, tmp_path: Path, server_pair: CertKeyPair
) -> None:
    holder = SSLContextHolder(server_pair)
    path = str(tmp_path / "s.sock")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, holder)
            with pytest.raises(UnavailableError, match="Cannot listen"):
                await serve_tcp(probe, address, holder)
            await nursery.start(serve_unix, probe, path)
            with pytest.raises(UnavailableError, match="already listening"):
                await serve_unix(probe, path)
            nursery.cancel_scope.cancel()


async def test_stale_unix_socket_file_is_replaced(probe: Any, tmp_path: Path) -> None:
    path = tmp_path / "control.socket"
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file remains, nobody listens
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, probe, path, mode=0o600))
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            async with Client.unix(path) as client:
                assert (await client.query("GET", "/x"))["path"] == "/x"
            nursery.cancel_scope.cancel()


async def test_certificate_swap_applies_to_new_connections(
    probe: Any, server_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    holder = SSLContextHolder(server_pair)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, holder)
            async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
                await client.query("GET", "/")
                holder.swap(other_pair)
                with pytest.raises(UnavailableError, match="pinned"):
                    await client.query("GET", "/")
            async with Client.tls(address, cert=None, pinned=other_pair.cert) as client:
                assert (await client.query("GET", "/"))["kind"] == "tls"
            nursery.cancel_scope.cancel()


async def test_plain_http_on_tls_listener_gets_nothing(
    probe: Any, server_pair: CertKeyPair
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, LOCAL, SSLContextHolder(server_pair))
            async with httpx.AsyncClient() as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get(f"http://{address}/core/1.0", timeout=10)
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            async with httpx.AsyncClient(verify=insecure) as raw:
                response = await raw.get(f"https://{address}/core/1.0", timeout=10)
            assert response.json()["metadata"]["certs"] == []
            nursery.cancel_scope.cancel()


def _second_loopback() -> str:
    import socket

    probe = socket.socket()
    try:
        probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a local address on this system")
    finally:
        probe.close()
    return "127.0.0.2:0"


async def test_pinning_uses_the_dns_name_not_the_ip(
    probe: Any, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    # The certificate's SANs are srv.example, 127.0.0.1 and ::1: a member at 127.0.0.2
    # only verifies because the TLS server name is the pinned certificate's DNS SAN.
    from microtrio._certs import open_tls_stream

    local = _second_loopback()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tcp, probe, local, SSLContextHolder(server_pair))
            async with Client.tls(address, cert=client_pair, pinned=server_pair.cert) as client:
                assert (await client.query("GET", "/"))["kind"] == "tls"
            # the websocket path, as the Raft transport dials it
            stream = await open_tls_stream(address, cert=client_pair, pinned=server_pair.cert)
            ws = await trio_websocket.wrap_client_stream(nursery, stream, address, "/raft")
            info = json.loads(await ws.get_message())
            await ws.aclose()
            assert info["certs"] == [client_pair.cert.decode()]
            with pytest.raises(UnavailableError, match="pinned"):
                await open_tls_stream(address, cert=client_pair, pinned=client_pair.cert)
            nursery.cancel_scope.cancel()


async def test_drain_deadline_cancels_stuck_requests(server_pair: CertKeyPair) -> None:
    entered = trio.Event()

    async def stuck_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            entered.set()
            await trio.sleep_forever()

    stop = trio.Event()
    errors: list[BaseException] = []

    async def request(address: str) -> None:
        async with Client.tls(address, cert=None, pinned=server_pair.cert) as client:
            try:
                await client.query("GET", "/")
            except UnavailableError as exc:
                errors.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            serve = partial(
                serve_tcp,
                stuck_app,
                LOCAL,
                SSLContextHolder(server_pair),
                lifespan=False,
                shutdown_trigger=stop.wait,
                graceful_timeout=0.1,
            )
            address = await nursery.start(serve)
            nursery.start_soon(request, address)
            await entered.wait()
            stop.set()
        # serve_tcp returned (the nursery exited) and the client saw the connection drop
        assert len(errors) == 1


async def test_alpn_protocol_gets_its_stream_handler(
    probe: Any, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    """A client that negotiates a registered ALPN protocol gets that protocol's handler
    (with its certificate in the extensions); HTTP clients on the same port still reach the
    app; a protocol offered but not served ends the connection."""
    seen: list[list[str]] = []

    async def echo(stream: trio.SSLStream[Any], extensions: dict[str, Any]) -> None:
        seen.append(extensions["tls"]["client_cert_chain"])
        data = await stream.receive_some(100)
        await stream.send_all(b"echo:" + data)

    holder = SSLContextHolder(server_pair)
    holder.context.set_alpn_protocols(["x-echo/1", "x-unserved/1", "http/1.1"])

    async def dial(protocol: str) -> trio.SSLStream[trio.SocketStream]:
        context = client_ssl_context(client_pair, server_pair.cert)
        context.set_alpn_protocols([protocol])
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, context, server_hostname=None)
        await stream.do_handshake()
        return stream

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_tcp, stream_handlers={"x-echo/1": echo}), probe, LOCAL, holder
            )
            host, port = address.rsplit(":", 1)
            stream = await dial("x-echo/1")
            assert stream.selected_alpn_protocol() == "x-echo/1"
            await stream.send_all(b"ping")
            assert await stream.receive_some(100) == b"echo:ping"
            assert seen == [[client_pair.cert.decode()]]
            await trio.aclose_forcefully(stream)

            stream = await dial("x-unserved/1")
            try:  # closed by the server: the write fails, or the read sees the end
                await stream.send_all(b"ping")
                reply = await stream.receive_some(100)
            except trio.BrokenResourceError:
                reply = b""
            assert reply == b""
            await trio.aclose_forcefully(stream)

            async with Client.tls(address, cert=client_pair, pinned=server_pair.cert) as client:
                info = await client.query("GET", "/core/1.0")
            assert info["kind"] == "tls"
            nursery.cancel_scope.cancel()


async def test_trust_memo_follows_the_truststore_and_the_clock(
    tmp_path: Path, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    """A TLS connection keeps its truststore lookup, but the validity period is checked
    at every request's ``now`` and any truststore change drops the memo."""
    import datetime

    from microtrio._api._listener import _TrustMemo, trusted_member_for_scope
    from microtrio._certs import load_certificate

    store = Truststore(tmp_path / "truststore")
    store.add(TrustedMember("cli.example", "127.0.0.1:1", client_pair.cert.decode()))
    memo = _TrustMemo()
    scope = {
        "type": "http",
        "extensions": {
            "microtrio": {"listener": "tls", "trust": memo},
            "tls": {"client_cert_chain": [client_pair.cert.decode()]},
        },
    }
    cert = load_certificate(client_pair.cert)
    inside = cert.not_valid_before_utc + datetime.timedelta(days=1)
    after = cert.not_valid_after_utc + datetime.timedelta(seconds=1)
    found = trusted_member_for_scope(scope, store, now=inside)
    assert found is not None and found.name == "cli.example"
    assert trusted_member_for_scope(scope, store, now=after) is None  # expired: refused
    assert trusted_member_for_scope(scope, store, now=inside) is not None
    store.remove("cli.example")
    assert trusted_member_for_scope(scope, store, now=inside) is None  # removed: refused
    store.add(TrustedMember("cli.example", "127.0.0.1:1", other_pair.cert.decode()))
    assert trusted_member_for_scope(scope, store, now=inside) is None  # another cert now
    # and the memo gives what the truststore itself says, in every case above
    assert store.trusted_member([client_pair.cert.decode()], now=inside) is None
