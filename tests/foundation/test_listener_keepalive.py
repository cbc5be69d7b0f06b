"""The listener's keep-alive timer (one task per connection whose deadline moves) and its
response coalescing: an idle connection is closed after ``Limits.header_timeout``, a
busy one is not, a connection whose client went away is released at once (not after the
keep-alive time), a server shutdown closes idle connections at once, and a response's
head and body arrive in one write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from microtrio import Limits
from microtrio._api._listener import ListenerLoad, serve_unix

REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """``/x`` answers at once; ``/wait`` answers when the client disconnects (never)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/wait":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed early: {data!r}"
        data += chunk
    return data


async def wait_closed_by_server(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


async def serve(
    nursery: trio.Nursery, path: Path, limits: Limits, load: ListenerLoad, stop: trio.Event
) -> None:
    await nursery.start(
        lambda task_status: serve_unix(
            echo_app,
            str(path),
            lifespan=False,
            limits=limits,
            load=load,
            shutdown_trigger=stop.wait,
            graceful_timeout=10,
            task_status=task_status,
        )
    )


async def wait_connections(load: ListenerLoad, count: int) -> None:
    while load.statistics().connections != count:  # noqa: ASYNC110 - polling a counter
        await trio.sleep(0.01)


async def test_idle_connection_closed_after_header_timeout(tmp_path: Path) -> None:
    load, stop = ListenerLoad(), trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await serve(nursery, tmp_path / "s", Limits(header_timeout=0.5), load, stop)
            stream = await trio.open_unix_socket(str(tmp_path / "s"))
            for _ in range(3):  # keep-alive: several requests on one connection
                await stream.send_all(REQUEST)
                answer = await read_response(stream)
                assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
            idle_from = trio.current_time()
            await wait_closed_by_server(stream)
            assert trio.current_time() - idle_from >= 0.4  # not before the keep-alive time
            await wait_connections(load, 0)
            await stream.aclose()
            stop.set()


async def test_gone_client_is_released_at_once(tmp_path: Path) -> None:
    """With a keep-alive time of 60 s, connections whose clients closed (idle, or while a
    request was being answered) are released long before it."""
    load, stop = ListenerLoad(), trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await serve(nursery, tmp_path / "s", Limits(header_timeout=60), load, stop)
            idle = await trio.open_unix_socket(str(tmp_path / "s"))
            await idle.send_all(REQUEST)
            await read_response(idle)
            busy = await trio.open_unix_socket(str(tmp_path / "s"))
            await busy.send_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_connections(load, 2)
            await idle.aclose()
            await busy.aclose()
            await wait_connections(load, 0)
            stop.set()


async def test_shutdown_closes_idle_connections_at_once(tmp_path: Path) -> None:
    load, stop = ListenerLoad(), trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await serve(nursery, tmp_path / "s", Limits(header_timeout=60), load, stop)
            stream = await trio.open_unix_socket(str(tmp_path / "s"))
            await stream.send_all(REQUEST)
            await read_response(stream)
            stop.set()
            await wait_closed_by_server(stream)  # long before the 60 s keep-alive time
            await stream.aclose()


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def aclose(self) -> None:
        self.writes.append(b"<closed>")


async def test_response_head_and_body_go_out_as_one_write() -> None:
    from microtrio._api._listener import _CoalescingStream

    inner = Recorder()
    stream = _CoalescingStream(inner)  # type: ignore[arg-type]
    head = b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n"
    await stream.send_all(head)
    assert inner.writes == []  # held until the body
    await stream.send_all(b"ok")
    await stream.send_all(b"")  # h11's end of a Content-Length body: nothing to write
    assert inner.writes == [head + b"ok"]
    interim = b"HTTP/1.1 100 \r\n\r\n"
    await stream.send_all(interim)  # an interim response goes out at once
    assert inner.writes[-1] == interim
    await stream.send_all(b"HTTP/1.1 204 \r\n\r\n")
    await stream.send_all(b"")  # an empty body still flushes the head
    assert inner.writes[-1] == b"HTTP/1.1 204 \r\n\r\n"
    await stream.send_all(b"HTTP/1.1 500 \r\n\r\n")
    await stream.aclose()  # a held head is flushed before closing
    assert inner.writes[-2:] == [b"HTTP/1.1 500 \r\n\r\n", b"<closed>"]
