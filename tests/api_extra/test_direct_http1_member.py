"""The direct HTTP/1.1 path on a real kv member (mutual TLS and the control socket).

Raw connections check what a client sees: fast requests answered on one keep-alive
connection without hypercorn ever being started for it; a Quart route in the middle of
such a connection handed to hypercorn with the rest of it (and still answered, as are the
fast requests after it); trust refused without a certificate or with a wrong Host; HEAD
handed off (501 as before); an oversize head refused; httpx's pooled connections; an
answer larger than the socket takes at once, pipelined.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _member_support import CEILING, Running, run_member

from examples.kv import service
from microtrio._api import _listener
from microtrio._certs import client_ssl_context, load_cert_key_pair, open_tls_stream


class CountingTCPServer(_listener._TCPServer):
    """hypercorn's connection handler, counted."""

    started = 0

    def __init__(self, *args: Any) -> None:
        CountingTCPServer.started += 1
        super().__init__(*args)


@pytest.fixture
async def member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        running = await run_member(nursery, tmp_path, service.daemon_args(drain_timeout=2.0))
        monkeypatch.setattr(_listener, "_TCPServer", CountingTCPServer)
        CountingTCPServer.started = 0
        yield running
        nursery.cancel_scope.cancel()


class Raw:
    """A raw HTTP/1.1 connection: write bytes, read whole responses."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.data = b""

    async def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.data:
            chunk = await self.stream.receive_some(65536)
            assert chunk, f"closed early: {self.data!r}"
            self.data += chunk
        head, _, rest = self.data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "closed in a body"
            rest += chunk
        self.data = rest[length:]
        return status, headers, rest[:length]

    async def closed(self) -> bool:
        try:
            return self.data == b"" and await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


@asynccontextmanager
async def connect(member: Running, *, via: str, cert: bool = True) -> AsyncIterator[Raw]:
    if via == "unix":
        stream: trio.abc.Stream = await trio.open_unix_socket(
            str(member.state_dir / "control.socket")
        )
    else:
        pinned = (member.state_dir / "cluster.crt").read_bytes()
        pair = None
        if cert:
            pair = load_cert_key_pair(
                member.state_dir / "server.crt", member.state_dir / "server.key"
            )
        stream = await open_tls_stream(member.address, cert=pair, pinned=pinned)
    try:
        yield Raw(stream)
    finally:
        await trio.aclose_forcefully(stream)


def req(method: str, path: str, host: str, body: bytes = b"", *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *extra]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("via", ["tls", "unix"])
async def test_fast_requests_never_reach_hypercorn(member: Running, via: str) -> None:
    host = member.address if via == "tls" else "x"
    with trio.fail_after(CEILING):
        async with connect(member, via=via) as raw:
            await raw.stream.send_all(req("PUT", "/1.0/kv/k", host, b"v1"))
            assert (await raw.response())[0] == 200
            # pipelined: three requests in one write
            await raw.stream.send_all(
                req("GET", "/1.0/kv/k", host)
                + req("PUT", "/1.0/kv/k", host, b"v2")
                + req("GET", "/1.0/kv/k?stale=1", host)
            )
            answers = [await raw.response() for _ in range(3)]
            assert [(s, b) for s, _, b in answers] == [(200, b"v1"), (200, json_ok()), (200, b"v2")]
            assert answers[0][1]["content-type"] == "application/octet-stream"
            assert "server" not in answers[0][1] and "date" in answers[0][1]
            # errors in the standard envelope, connection kept
            await raw.stream.send_all(req("GET", "/1.0/kv/missing", host))
            status, headers, body = await raw.response()
            assert status == 404 and json.loads(body)["error"] == "No key 'missing'"
            assert headers["x-content-type-options"] == "nosniff"
            await raw.stream.send_all(req("GET", "/1.0/kv/k", host, b"", "Connection: close"))
            status, headers, body = await raw.response()
            assert (status, headers["connection"], body) == (200, "close", b"v2")
            assert await raw.closed()
    assert CountingTCPServer.started == 0


def json_ok() -> bytes:
    return (
        b'{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,'
        b'"error":"","metadata":{}}\n'
    )


@pytest.mark.parametrize("via", ["tls", "unix"])
async def test_quart_route_mid_connection_hands_the_rest_to_hypercorn(
    member: Running, via: str
) -> None:
    host = member.address if via == "tls" else "x"
    with trio.fail_after(CEILING):
        async with connect(member, via=via) as raw:
            await raw.stream.send_all(req("PUT", "/1.0/kv/mid", host, b"before"))
            assert (await raw.response())[0] == 200
            assert CountingTCPServer.started == 0
            # a core route (Quart), then fast ones again, all on the same connection
            await raw.stream.send_all(req("GET", "/core/1.0", host))
            status, _, body = await raw.response()
            assert status == 200 and json.loads(body)["metadata"]["ready"] is True
            await raw.stream.send_all(req("PUT", "/1.0/kv/mid", host, b"after"))
            assert (await raw.response())[0] == 200
            await raw.stream.send_all(req("GET", "/1.0/kv/mid", host))
            assert (await raw.response())[2] == b"after"
            # HEAD is not a fast method: handed off too (on a new connection), 501 without
            # a body, and the connection goes on
        async with connect(member, via=via) as raw:
            await raw.stream.send_all(req("HEAD", "/1.0/kv/mid", host))
            status, headers, body = await raw.response(head_only=True)
            assert status == 501 and body == b"" and int(headers["content-length"]) > 0
            await raw.stream.send_all(req("GET", "/1.0/kv/mid", host))
            assert (await raw.response())[2] == b"after"
    assert CountingTCPServer.started == 2


async def test_trust_is_decided_per_request(member: Running) -> None:
    with trio.fail_after(CEILING):
        async with connect(member, via="tls", cert=False) as raw:
            await raw.stream.send_all(req("PUT", "/1.0/kv/nocert", member.address, b"x"))
            status, _, body = await raw.response()
            assert status == 403 and json.loads(body)["error"] == "not authorized"
        async with connect(member, via="tls") as raw:
            # the same trusted connection: a wrong Host is refused, the right one served
            await raw.stream.send_all(req("PUT", "/1.0/kv/host", "example.com", b"x"))
            assert (await raw.response())[0] == 403
            await raw.stream.send_all(req("PUT", "/1.0/kv/host", member.address, b"x"))
            assert (await raw.response())[0] == 200
        async with connect(member, via="unix") as raw:
            for key in ("nocert", "host"):  # the refused writes changed nothing
                await raw.stream.send_all(req("GET", f"/1.0/kv/{key}", "x"))
                assert (await raw.response())[0] == (404 if key == "nocert" else 200)
    assert CountingTCPServer.started == 0


async def test_trust_follows_truststore_changes_on_an_open_connection(member: Running) -> None:
    """The per-connection trust memo is dropped when the truststore changes."""
    daemon = member.app.daemon
    assert daemon is not None
    store = daemon.state.truststore
    with trio.fail_after(CEILING):
        async with connect(member, via="tls") as raw:
            await raw.stream.send_all(req("GET", "/1.0/kv/none", member.address))
            assert (await raw.response())[0] == 404  # trusted: the key is just missing
            entry = store.members()[0]
            store.remove(entry.name)
            try:
                await raw.stream.send_all(req("GET", "/1.0/kv/none", member.address))
                assert (await raw.response())[0] == 403
            finally:
                store.add(entry)
            await raw.stream.send_all(req("GET", "/1.0/kv/none", member.address))
            assert (await raw.response())[0] == 404


async def test_oversize_head_is_refused(member: Running) -> None:
    big = "X-Big: " + "a" * (64 * 1024)
    with trio.fail_after(CEILING):
        async with connect(member, via="unix") as raw:
            await raw.stream.send_all(req("GET", "/1.0/kv/k", "x", b"", big))
            status, headers, body = await raw.response()
            assert (status, headers["connection"], body) == (431, "close", b"")
            assert await raw.closed()


async def test_httpx_keep_alive_pool(member: Running) -> None:
    pinned = (member.state_dir / "cluster.crt").read_bytes()
    pair = load_cert_key_pair(member.state_dir / "server.crt", member.state_dir / "server.key")
    transport = httpx.AsyncHTTPTransport(verify=client_ssl_context(pair, pinned))
    from microtrio._certs import pinned_server_name

    extensions = {"sni_hostname": pinned_server_name(pinned)}
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(
            transport=transport, base_url=f"https://{member.address}"
        ) as client:
            for i in range(5):
                put = await client.put(f"/1.0/kv/p{i}", content=b"%d" % i, extensions=extensions)
                assert put.status_code == 200 and put.json()["type"] == "sync"
                got = await client.get(f"/1.0/kv/p{i}", extensions=extensions)
                assert (got.status_code, got.content) == (200, b"%d" % i)
            core = await client.get("/core/1.0", extensions=extensions)  # handed off
            assert core.status_code == 200
            got = await client.get("/1.0/kv/p4", params={"stale": "1"}, extensions=extensions)
            assert got.content == b"4"
    assert CountingTCPServer.started == 1  # one pooled connection, handed off once


async def test_an_answer_larger_than_the_socket_takes_at_once(member: Running) -> None:
    """A response the socket cannot take in one write (the rest goes out as the client
    reads) arrives whole, and so does the pipelined answer after it, on the same
    connection."""
    host = member.address
    big = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB, more than loopback buffers
    with trio.fail_after(CEILING):
        async with connect(member, via="tls") as raw:
            await raw.stream.send_all(req("PUT", "/1.0/kv/big", host, big))
            assert (await raw.response())[0] == 200
            await raw.stream.send_all(req("PUT", "/1.0/kv/small", host, b"s"))
            assert (await raw.response())[0] == 200
            # both asked before reading anything: the member writes the first answer while
            # nobody reads, so the socket fills up before the answer is out
            await raw.stream.send_all(
                req("GET", "/1.0/kv/big", host) + req("GET", "/1.0/kv/small", host)
            )
            status, _, body = await raw.response()
            assert status == 200 and body == big
            assert (await raw.response())[:3:2] == (200, b"s")
    assert CountingTCPServer.started == 0
