"""Limits (issue 8): body, SQL text, connections, requests in flight, slow clients.

Listener-level limits are tested on ``serve_tcp``/``serve_unix`` with a tiny ASGI app;
body and SQL limits on a real member whose ``DaemonArgs.limits`` are small. Every refusal
is checked to change nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from member.conftest import CEILING, Member, call, make_args, start_member

from microtrio._api._limits import DEFAULT_LIMITS, FRAME_OVERHEAD, Limits
from microtrio._api._listener import ListenerLoad, _make_config, serve_tcp, serve_unix
from microtrio._certs import (
    CertKeyPair,
    SSLContextHolder,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
)
from microtrio._errors import ValidationError
from microtrio._replication._transport import DEFAULT_MAX_FRAME_SIZE, TransportConfig
from microtrio.raft import Config

# -- the Limits object -------------------------------------------------------------------


def test_defaults_agree_with_the_layers_below() -> None:
    assert DEFAULT_LIMITS.max_raft_frame_size == DEFAULT_MAX_FRAME_SIZE
    assert DEFAULT_LIMITS.snapshot_chunk_size == Config(id=1).snapshot_chunk_size
    assert DEFAULT_LIMITS.snapshot_chunk_size + FRAME_OVERHEAD <= DEFAULT_MAX_FRAME_SIZE
    assert DEFAULT_LIMITS.max_sql_length < DEFAULT_LIMITS.max_body_size


def test_limits_apply_to_transport_and_raft_configs() -> None:
    limits = Limits(max_raft_frame_size=4 << 20, snapshot_chunk_size=256 << 10)
    assert limits.transport_config(TransportConfig()).max_frame_size == 4 << 20
    assert limits.raft_config(Config(id=3)).snapshot_chunk_size == 256 << 10
    assert limits.raft_config(Config(id=3)).id == 3
    with pytest.raises(TypeError):
        limits.raft_config(object())


@pytest.mark.parametrize(
    "changes",
    [
        {"max_body_size": 0},
        {"max_in_flight": -1},
        {"max_connections": True},
        {"max_sql_length": 1.5},
        {"header_timeout": 0},
        {"body_timeout": float("nan")},
        {"read_timeout": -1.0},
        {"snapshot_chunk_size": 16 << 20},  # no room for the frame overhead
    ],
)
def test_invalid_limits_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Limits(**changes)


def test_hypercorn_gets_the_limits() -> None:
    limits = Limits(header_timeout=1.5, max_header_size=4096, read_timeout=90.0)
    config = _make_config(2.0, limits)
    assert config.keep_alive_timeout == 1.5
    assert config.h11_max_incomplete_size == 4096
    assert config.read_timeout == 90.0
    assert config.ssl_handshake_timeout == limits.handshake_timeout
    assert config.websocket_max_message_size == limits.max_raft_frame_size
    assert config.graceful_timeout == 2.0


# -- listener limits ---------------------------------------------------------------------


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """``/block`` waits for ``release``; everything else answers 200 at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        await release.wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


release = trio.Event()


@dataclass
class Served:
    address: str
    load: ListenerLoad
    pair: CertKeyPair | None

    async def connect(self) -> trio.abc.Stream:
        if self.pair is None:
            return await trio.open_unix_socket(self.address)
        host, _, port = self.address.rpartition(":")
        tcp = await trio.open_tcp_stream(host, int(port))
        context = client_ssl_context(None, self.pair.cert)
        stream = trio.SSLStream(tcp, context, server_hostname=pinned_server_name(self.pair.cert))
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream


@asynccontextmanager
async def serving(limits: Limits, tmp_path: Path, *, tls: bool) -> AsyncIterator[Served]:
    global release
    release = trio.Event()
    load = ListenerLoad()
    async with trio.open_nursery() as nursery:
        if tls:
            pair = generate_cert_key_pair("limits-test")
            holder = SSLContextHolder(pair)
            bound = await nursery.start(
                lambda task_status: serve_tcp(
                    asgi_app, "127.0.0.1:0", holder, lifespan=False, limits=limits, load=load,
                    task_status=task_status,
                )
            )  # fmt: skip
            yield Served(bound, load, pair)
        else:
            path = str(tmp_path / "limits.socket")
            bound = await nursery.start(
                lambda task_status: serve_unix(
                    asgi_app, path, lifespan=False, limits=limits, load=load,
                    task_status=task_status,
                )
            )  # fmt: skip
            yield Served(bound, load, None)
        nursery.cancel_scope.cancel()


REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def request_on(stream: trio.abc.Stream) -> bytes:
    await stream.send_all(REQUEST)
    return bytes(await stream.receive_some(4096))


async def closed_by_server(stream: trio.abc.Stream) -> bool:
    """True once the peer closed (EOF or reset); False if it sent data instead."""
    try:
        data = await stream.receive_some(4096)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return True
    return data == b""


async def wait_until(predicate: Any) -> None:
    """Poll a counter the server updates (no ordering by sleeping: the ceiling bounds it)."""
    while not predicate():  # noqa: ASYNC110 - the counters have no event to wait on
        await trio.sleep(0.005)


async def test_slow_loris_is_cut_off(tmp_path: Path) -> None:
    """Headers sent one byte every 50 ms (a 30 s head) are cut off after header_timeout."""
    limits = Limits(header_timeout=0.5)
    head = b"GET / HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: " + b"a" * 560 + b"\r\n\r\n"
    with trio.fail_after(CEILING):
        async with serving(limits, tmp_path, tls=True) as served:
            stream = await served.connect()
            start = trio.current_time()
            sent = 0

            async def dribble() -> None:
                nonlocal sent
                try:
                    for i in range(len(head)):
                        await stream.send_all(head[i : i + 1])
                        sent += 1
                        await trio.sleep(0.05)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dribble)
                assert await closed_by_server(stream)
                elapsed = trio.current_time() - start
                nursery.cancel_scope.cancel()
            assert 0.45 <= elapsed < 10.0, elapsed
            assert sent < len(head), "the whole head got through"
            # A well-behaved client is still served.
            fresh = await served.connect()
            assert (await request_on(fresh)).startswith(b"HTTP/1.1 200")
            await fresh.aclose()
            await trio.aclose_forcefully(stream)


async def test_connection_cap_refuses_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_connections=3, header_timeout=30.0)
    with trio.fail_after(CEILING):
        async with serving(limits, tmp_path, tls=True) as served:
            held = [await served.connect() for _ in range(3)]
            # The fourth is closed before TLS: its handshake fails.
            with pytest.raises(trio.BrokenResourceError):
                extra = await served.connect()
                await closed_by_server(extra)
            assert served.load.statistics().refused_connections == 1
            assert served.load.statistics().connections == 3
            assert "refusing connections: 3 open (1 refused so far)" in caplog.text
            # The three held ones still work.
            for stream in held:
                assert (await request_on(stream)).startswith(b"HTTP/1.1 200")
            # Closing one frees its slot.
            await held.pop().aclose()
            await wait_until(lambda: served.load.connections == 2)
            again = await served.connect()
            assert (await request_on(again)).startswith(b"HTTP/1.1 200")
            for stream in [*held, again]:
                await stream.aclose()


async def test_in_flight_cap_answers_503(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(max_in_flight=2)
    with trio.fail_after(CEILING):
        async with serving(limits, tmp_path, tls=False) as served:
            transport = httpx.AsyncHTTPTransport(uds=served.address)
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                answers: list[int] = []

                async def blocked() -> None:
                    answers.append((await client.get("/block")).status_code)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(blocked)
                    nursery.start_soon(blocked)
                    await wait_until(lambda: served.load.in_flight == 2)
                    refused = await client.get("/")
                    assert refused.status_code == 503
                    body = refused.json()
                    assert body["type"] == "error" and body["error_code"] == 503
                    assert "in flight" in body["error"]
                    assert refused.headers["retry-after"] == "1"
                    release.set()
                assert answers == [200, 200]
                assert served.load.statistics().refused_requests == 1
                assert "refusing requests: 2 in flight (1 refused so far), e.g. GET /" in (
                    caplog.text
                )
                assert (await client.get("/")).status_code == 200
                await wait_until(lambda: served.load.in_flight == 0)


# -- body and SQL limits on a member -----------------------------------------------------

SMALL = Limits(max_body_size=64 * 1024, max_sql_length=1024, body_timeout=0.5)


@pytest.fixture
async def small_member(tmp_path: Path) -> AsyncIterator[Member]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            found = await start_member(nursery, tmp_path / "state", make_args(limits=SMALL))
        yield found
        nursery.cancel_scope.cancel()


async def dump(member: Member) -> str:
    status, body = await call(member, "GET", "/core/internal/sql")
    assert status == 200
    text = body["metadata"]["text"]
    assert isinstance(text, str)
    return text


def assert_error(status: int, body: Any, expected: int, words: str) -> None:
    assert status == expected, body
    assert body["type"] == "error" and body["error_code"] == expected, body
    assert words in body["error"], body


async def test_body_over_the_limit_is_413_and_changes_nothing(small_member: Member) -> None:
    query = "CREATE TABLE too_big (x);" + " " * SMALL.max_body_size
    for via in ("unix", "tls"):
        status, body = await call(
            small_member, "POST", "/core/internal/sql", via=via, json_body={"query": query}
        )
        assert_error(status, body, 413, "too large")
    status, body = await call(
        small_member,
        "POST",
        "/core/control/tokens",
        json_body={"name": "joiner", "padding": "x" * SMALL.max_body_size},
    )
    assert_error(status, body, 413, "too large")
    assert "too_big" not in await dump(small_member)
    status, body = await call(small_member, "GET", "/core/control/tokens")
    assert status == 200 and body["metadata"] == []


async def test_chunked_body_over_the_limit_is_413_and_changes_nothing(
    small_member: Member,
) -> None:
    """No Content-Length: the body stops being buffered past the limit; reading it is 413."""
    payload = json.dumps({"query": "CREATE TABLE chunked (x);" + " " * SMALL.max_body_size})

    async def chunks() -> AsyncIterator[bytes]:
        data = payload.encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    transport = httpx.AsyncHTTPTransport(uds=str(small_member.socket))
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            response = await client.post("/core/internal/sql", content=chunks())
    assert "content-length" not in response.request.headers
    assert_error(response.status_code, response.json(), 413, "too large")
    assert "chunked" not in await dump(small_member)


async def test_sql_text_over_the_limit_is_400_and_changes_nothing(small_member: Member) -> None:
    base = "CREATE TABLE long_sql (x);"
    at_limit = base + " " * (SMALL.max_sql_length - len(base))
    status, body = await call(
        small_member, "POST", "/core/internal/sql", json_body={"query": at_limit + " "}
    )
    assert_error(status, body, 400, "SQL text too long")
    assert "long_sql" not in await dump(small_member)
    # Exactly at the limit is accepted (multi-byte characters count as bytes).
    status, body = await call(
        small_member, "POST", "/core/internal/sql", json_body={"query": at_limit}
    )
    assert status == 200, body
    assert "long_sql" in await dump(small_member)
    wide = "SELECT '" + "é" * (SMALL.max_sql_length // 2) + "';"
    status, body = await call(small_member, "POST", "/core/internal/sql", json_body={"query": wide})
    assert_error(status, body, 400, "SQL text too long")


async def test_slow_body_is_408(small_member: Member) -> None:
    """A body that stops arriving is answered 408 after body_timeout, and nothing runs."""
    head = (
        b"POST /core/internal/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with trio.fail_after(CEILING):
        stream = await trio.open_unix_socket(str(small_member.socket))
        await stream.send_all(head + b'{"query": "CREATE TABLE slow (x);')
        start = trio.current_time()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = await stream.receive_some(4096)
            assert chunk, "closed without an answer"
            answer += chunk
        elapsed = trio.current_time() - start
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert elapsed >= 0.45
    assert "slow" not in await dump(small_member)


async def test_untrusted_caller_with_a_huge_body_gets_403(
    small_member: Member, stranger_pair: CertKeyPair
) -> None:
    """Trust comes first: a stranger learns nothing but 403, whatever it sends."""
    status, body = await call(
        small_member,
        "POST",
        "/core/internal/sql",
        via="tls",
        pair=stranger_pair,
        content=b" " * (2 * SMALL.max_body_size),
    )
    assert_error(status, body, 403, "not authorized")


async def test_oversized_request_head_is_refused(tmp_path: Path) -> None:
    """h11 refuses a head once more than max_header_size bytes are buffered without a
    complete head (a head that arrives in one read, up to 64 KiB, is parsed whole)."""
    limits = Limits(max_header_size=2048)
    with trio.fail_after(CEILING):
        async with serving(limits, tmp_path, tls=False) as served:
            stream = await served.connect()
            head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(head)
            answer, reset = b"", False
            try:
                while chunk := await stream.receive_some(4096):
                    answer += chunk
            except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                reset = True
            await stream.aclose()
            # 431 (or the reset that may swallow it), never an answer from the app.
            assert answer.startswith(b"HTTP/1.1 431") or (reset and not answer), answer
            # A head under the limit is served.
            fresh = await served.connect()
            assert (await request_on(fresh)).startswith(b"HTTP/1.1 200")
            await fresh.aclose()


async def test_daemon_applies_raft_limits(tmp_path: Path) -> None:
    """A member's Raft channel and snapshot chunks follow DaemonArgs.limits."""
    limits = Limits(max_raft_frame_size=4 << 20, snapshot_chunk_size=256 << 10)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            member = await start_member(nursery, tmp_path / "m", make_args(limits=limits))
            daemon = member.app.daemon
            assert daemon is not None and daemon._cluster is not None
            replication = daemon._cluster.replication
            assert replication.transport.config.max_frame_size == 4 << 20
            assert replication.driver.config.snapshot_chunk_size == 256 << 10
            nursery.cancel_scope.cancel()
