"""The listener's direct HTTP/1.1 path (``microtrio._api._http1``) on in-memory streams.

A fake :class:`DirectApp` claims the paths under ``/fast``; everything else must be handed
off with every byte read so far. Bytes are delivered piece by piece and the server is
let to block between pieces (``wait_all_tasks_blocked``), so "a body split across reads"
really is split. Time-outs run on the autojump clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from microtrio import Limits
from microtrio._api._http1 import (
    DirectApp,
    DirectConnections,
    HTTPDate,
    ListenerFacts,
    parse_head,
    serve_http1,
)
from microtrio._api._listener import ListenerLoad


class FakeApp:
    """``/fast/echo`` answers its body, ``/fast/ignore`` never reads it, ``/fast/block``
    waits for ``release``, ``/fast/boom`` raises; the answer names method, path, query."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.scopes: list[dict[str, Any]] = []
        self.release = trio.Event()
        self.entered = trio.Event()

    def match_direct(self, method: str, path: str) -> object | None:
        return path if path.startswith("/fast/") else None

    async def respond_direct(
        self,
        route: object,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        content_length: int | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = b""
        if route == "/fast/echo":
            while True:
                message = await receive()
                assert message["type"] == "http.request"
                body += message["body"]
                if not message["more_body"]:
                    break
            assert len(body) == (content_length or 0)
        elif route == "/fast/block":
            self.entered.set()
            await self.release.wait()
        elif route == "/fast/boom":
            raise RuntimeError("handler bug")
        elif route == "/fast/badheader":
            return 200, [(b"x-split", b"a\r\nx-injected: 1")], b""
        elif route == "/fast/badstatus":
            return 42, [], b""
        self.seen.append((scope["method"], scope["path"], body))
        self.scopes.append(scope)
        out = b"%s %s ?%s|%s" % (
            scope["method"].encode(),
            scope["path"].encode(),
            scope["query_string"],
            body,
        )
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(out))]
        return 200, headers, out


class Served:
    """One connection served by ``serve_http1`` in the background."""

    def __init__(self, limits: Limits, app: FakeApp | None = None) -> None:
        self.app = app or FakeApp()
        self.load = ListenerLoad()
        self.connections = DirectConnections()
        self.facts = ListenerFacts(
            self.app, limits, self.load, "test", self.connections, HTTPDate(lambda: 0.0)
        )
        self.client, self.server = trio.testing.memory_stream_pair()
        self.handed: list[bytes] = []
        self.done = trio.Event()
        self.ended_at = 0.0

    async def run(self) -> None:
        async def hand_off(buffered: bytes) -> None:
            self.handed.append(buffered)

        await serve_http1(self.server, self.facts, {"microtrio": {"listener": "unix"}}, hand_off)
        self.ended_at = trio.current_time()
        await self.server.aclose()  # as the listener does
        self.done.set()

    async def send(self, data: bytes) -> None:
        await self.client.send_all(data)
        await trio.testing.wait_all_tasks_blocked()

    async def responses(self, count: int) -> list[tuple[bytes, bytes]]:
        """``count`` responses as ``(head, body)``; asserts nothing more is waiting."""
        data = b""
        found: list[tuple[bytes, bytes]] = []
        while len(found) < count:
            while b"\r\n\r\n" not in data:
                data += await self.client.receive_some()
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += await self.client.receive_some()
            found.append((head, rest[:length]))
            data = rest[length:]
        assert data == b""
        return found

    async def closed(self) -> bool:
        """Whether the server closed its side (after any pending answer was read)."""
        await self.done.wait()
        return await self.client.receive_some() == b""


LIMITS = Limits(header_timeout=5.0, body_timeout=10.0, max_header_size=1024)


def request(
    method: str, target: str, body: bytes = b"", *extra: str, version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test", *extra]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_the_fake_app_is_a_direct_app() -> None:
    assert isinstance(FakeApp(), DirectApp)


async def test_keep_alive_and_pipelining() -> None:
    served = Served(LIMITS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            # three requests in one write: answered in order, each in one piece
            await served.send(
                request("PUT", "/fast/echo", b"hello")
                + request("GET", "/fast/a%20b?x=1&y=")
                + request("DELETE", "/fast/echo", b"")
            )
            answers = await served.responses(3)
            assert [body for _, body in answers] == [
                b"PUT /fast/echo ?|hello",
                b"GET /fast/a b ?x=1&y=|",
                b"DELETE /fast/echo ?|",
            ]
            for head, _ in answers:
                assert head.startswith(b"HTTP/1.1 200 \r\ncontent-type: text/plain\r\n")
                assert b"date: Thu, 01 Jan 1970 00:00:00 GMT" in head
                assert b"onnection" not in head  # keep-alive: no Connection: close
            # the connection stays open for more
            await served.send(request("GET", "/fast/again"))
            assert (await served.responses(1))[0][1] == b"GET /fast/again ?|"
            assert not served.done.is_set() and served.handed == []
            scope = served.app.scopes[1]
            assert scope["raw_path"] == b"/fast/a%20b" and scope["http_version"] == "1.1"
            assert (b"host", b"test") in scope["headers"]
            nursery.cancel_scope.cancel()


async def test_body_split_across_reads_and_unread_body_drained() -> None:
    served = Served(LIMITS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            whole = request("PUT", "/fast/echo", b"0123456789")
            head_end = whole.index(b"\r\n\r\n")
            for piece in (whole[:10], whole[10 : head_end + 2], whole[head_end + 2 : -7]):
                await served.send(piece)
                assert served.app.seen == []  # still waiting for the rest
            await served.send(whole[-7:-3])
            await served.send(whole[-3:])
            assert (await served.responses(1))[0][1] == b"PUT /fast/echo ?|0123456789"
            # a body the handler never reads is skipped, the next request is served
            ignored = request("PUT", "/fast/ignore", b"x" * 300)
            await served.send(ignored[:-100])
            assert (await served.responses(1))[0][1] == b"PUT /fast/ignore ?|"
            await served.send(ignored[-100:] + request("GET", "/fast/next"))
            assert (await served.responses(1))[0][1] == b"GET /fast/next ?|"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("extra", "version"),
    [(("Connection: close",), "1.1"), (("Connection: keep-alive, Close",), "1.1"), ((), "1.0")],
)
async def test_connection_close_and_http_1_0(extra: tuple[str, ...], version: str) -> None:
    served = Served(LIMITS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            # the request after the closing one is never answered
            await served.send(
                request("GET", "/fast/x", b"", *extra, version=version) + request("GET", "/fast/y")
            )
            head, body = (await served.responses(1))[0]
            assert head.endswith(b"\r\nConnection: close") and body == b"GET /fast/x ?|"
            assert await served.closed()
            assert [path for _, path, _ in served.app.seen] == ["/fast/x"]
            assert served.handed == []


async def test_hand_off_replays_every_byte_read() -> None:
    served = Served(LIMITS)
    tail = request("GET", "/core/1.0") + request("GET", "/fast/after") + b"partial"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            await served.send(request("GET", "/fast/before") + tail)
            assert (await served.responses(1))[0][1] == b"GET /fast/before ?|"
            await served.done.wait()
    assert served.handed == [tail]  # the fallback got the rest, unparsed
    assert [path for _, path, _ in served.app.seen] == ["/fast/before"]


HANDED_OFF = [
    b"GARBAGE\r\n\r\n",
    b"GET /fast/x HTTP/2.0\r\nHost: t\r\n\r\n",
    b"GET /fast/x  HTTP/1.1\r\nHost: t\r\n\r\n",
    b"get /fast/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /fast/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS /fast/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET http://t/fast/x HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /fast/\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\n\r\n",  # no Host
    b"GET /fast/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost : t\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost: t\r\nX-Bad: a\x00b\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost: t\r\nX-Bad: a\rb\r\n\r\n",
    b"GET /fast/x HTTP/1.1\nHost: t\n\n",
    b"PUT /fast/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"PUT /fast/x HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\nx",
    b"PUT /fast/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"PUT /fast/x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /fast/x HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, upgrade\r\n\r\n",
    b"GET /slow/x HTTP/1.1\r\nHost: t\r\n\r\n",  # a route the app does not claim
]


@pytest.mark.parametrize("data", HANDED_OFF)
async def test_anything_else_is_handed_off_untouched(data: bytes) -> None:
    served = Served(LIMITS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            await served.send(data)
            await served.done.wait()
    assert served.handed == [data] and served.app.seen == []


def test_parse_head_fields() -> None:
    head = parse_head(
        b"PUT /a/%7Bb%7D?q=%20 HTTP/1.1\r\nHOST: h\r\nContent-Length:  12 \r\nX-Empty:\r\n"
        b"Connection: close"
    )
    assert head is not None
    assert (head.method, head.path, head.raw_path, head.query_string) == (
        "PUT",
        "/a/{b}",
        b"/a/%7Bb%7D",
        b"q=%20",
    )
    assert head.headers == [
        (b"host", b"h"),
        (b"content-length", b"12"),
        (b"x-empty", b""),
        (b"connection", b"close"),
    ]
    assert head.content_length == 12 and not head.keep_alive and head.http_version == "1.1"
    plain = parse_head(b"GET / HTTP/1.0")
    assert plain is not None and plain.content_length is None and not plain.keep_alive
    kept = parse_head(b"GET / HTTP/1.1\r\nHost: h")
    assert kept is not None and kept.keep_alive
    for data in HANDED_OFF[:-1]:
        if not data.startswith(b"GET /fast/x HTTP/1.1\nHost"):  # complete heads only
            assert parse_head(data.partition(b"\r\n\r\n")[0]) is None, data


async def test_oversize_head_is_431_and_closes() -> None:
    for data in (
        b"GET /fast/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000,  # never complete
        b"GET /fast/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n",  # complete
    ):
        served = Served(LIMITS)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(served.run)
                await served.send(data)
                head, body = (await served.responses(1))[0]
                assert head.startswith(b"HTTP/1.1 431 \r\n") and body == b""
                assert b"connection: close" in head
                assert await served.closed()
        assert served.app.seen == [] and served.handed == []


async def test_slow_head_and_idle_connection_are_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a head that never completes: closed header_timeout after the connection opened
    served = Served(LIMITS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.run)
        start = trio.current_time()
        await served.send(b"GET /fast/x HTTP/1.1\r\nHo")
        assert await served.closed()
        assert served.ended_at - start == pytest.approx(LIMITS.header_timeout)
    # an idle keep-alive connection: closed header_timeout after its last answer
    served = Served(LIMITS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.run)
        await trio.sleep(4.0)  # the first head arrives in time
        await served.send(request("GET", "/fast/x"))
        await served.responses(1)
        answered = trio.current_time()
        assert await served.closed()
        assert served.ended_at - answered == pytest.approx(LIMITS.header_timeout)
    assert served.handed == []


async def test_body_that_never_arrives_closes_after_body_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    served = Served(LIMITS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.run)
        start = trio.current_time()
        await served.send(request("PUT", "/fast/ignore", b"x" * 10)[:-4])
        assert (await served.responses(1))[0][0].startswith(b"HTTP/1.1 200")
        assert await served.closed()  # the rest of the body never came
        assert served.ended_at - start == pytest.approx(LIMITS.body_timeout)


async def test_in_flight_cap_answers_503_and_keeps_the_connection() -> None:
    served = Served(Limits(max_in_flight=1))
    served.load.in_flight = 1  # another request is being answered
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            await served.send(request("PUT", "/fast/echo", b"abc"))
            head, body = (await served.responses(1))[0]
            assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1" in head
            assert b'"error_code":503' in body and b"in flight" in body
            assert served.load.refused_requests == 1 and served.app.seen == []
            served.load.in_flight = 0
            await served.send(request("GET", "/fast/ok"))
            assert (await served.responses(1))[0][1] == b"GET /fast/ok ?|"
            assert served.load.in_flight == 0
            nursery.cancel_scope.cancel()


async def test_handler_error_and_invalid_response_are_500_envelopes() -> None:
    served = Served(LIMITS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.run)
            await served.send(request("GET", "/fast/boom"))
            head, body = (await served.responses(1))[0]
            assert head.startswith(b"HTTP/1.1 500 ") and b'"error_code":500' in body
            assert b"handler bug" not in body  # internals are not leaked
            for path in ("/fast/badheader", "/fast/badstatus"):  # never written as given
                await served.send(request("GET", path))
                head, body = (await served.responses(1))[0]
                assert head.startswith(b"HTTP/1.1 500 ") and b"injected" not in head
            await served.send(request("GET", "/fast/fine"))
            assert (await served.responses(1))[0][1] == b"GET /fast/fine ?|"
            nursery.cancel_scope.cancel()


async def test_terminate_closes_idle_connections_and_finishes_busy_ones() -> None:
    app = FakeApp()
    idle, busy = Served(LIMITS, app), Served(LIMITS, app)
    busy.connections = idle.connections  # one listener
    busy.facts.connections = idle.connections
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(idle.run)
            nursery.start_soon(busy.run)
            await idle.send(request("GET", "/fast/x"))
            await idle.responses(1)
            await busy.send(request("GET", "/fast/block"))
            await app.entered.wait()
            idle.connections.terminate()
            assert await idle.closed()  # at once: nothing was waiting to be answered
            assert not busy.done.is_set()
            app.release.set()
            head, _ = (await busy.responses(1))[0]
            assert head.endswith(b"\r\nConnection: close")  # answered, then closed
            assert await busy.closed()
