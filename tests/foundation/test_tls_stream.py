"""TLSStream: microtrio's one-pass TLS stream, against itself and against trio.SSLStream.

Each test opens a real loopback TCP connection (port 0) under a timeout ceiling.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from microtrio._certs import (
    CertKeyPair,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
    server_ssl_context,
)
from microtrio._tls import TLSStream

TIMEOUT = 30


@pytest.fixture(scope="module")
def pairs() -> tuple[CertKeyPair, CertKeyPair]:
    return generate_cert_key_pair("server"), generate_cert_key_pair("client")


def _server_context(pairs: tuple[CertKeyPair, CertKeyPair]) -> ssl.SSLContext:
    return server_ssl_context(pairs[0], alpn_protocols=("x-test/1", "http/1.1"))


def _client_context(pairs: tuple[CertKeyPair, CertKeyPair]) -> ssl.SSLContext:
    context = client_ssl_context(pairs[1], pairs[0].cert)
    context.set_alpn_protocols(["x-test/1"])
    return context


Wrap = Callable[..., Any]


def _ours(tcp: trio.SocketStream, context: ssl.SSLContext, **kw: Any) -> Any:
    return TLSStream(tcp, context, **kw)


def _trios(tcp: trio.SocketStream, context: ssl.SSLContext, **kw: Any) -> Any:
    return trio.SSLStream(tcp, context, https_compatible=True, **kw)


@asynccontextmanager
async def _connected(
    pairs: tuple[CertKeyPair, CertKeyPair], server_wrap: Wrap, client_wrap: Wrap
) -> AsyncIterator[tuple[Any, Any]]:
    """A (server, client) pair of handshaken TLS streams over loopback TCP."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server_tcp: list[trio.SocketStream] = []

    async def accept() -> None:
        server_tcp.append(await listeners[0].accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
    server = server_wrap(server_tcp[0], _server_context(pairs), server_side=True)
    client = client_wrap(
        client_tcp, _client_context(pairs), server_hostname=pinned_server_name(pairs[0].cert)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    try:
        yield server, client
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)
        await listeners[0].aclose()


async def _receive_exactly(stream: Any, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


COMBINATIONS = [
    pytest.param(_ours, _ours, id="ours-ours"),
    pytest.param(_ours, _trios, id="ours-server-trio-client"),
    pytest.param(_trios, _ours, id="trio-server-ours-client"),
]


@pytest.mark.parametrize(("server_wrap", "client_wrap"), COMBINATIONS)
async def test_both_directions_carry_big_and_small_messages(
    pairs: tuple[CertKeyPair, CertKeyPair], server_wrap: Wrap, client_wrap: Wrap
) -> None:
    # 3 MB each way at once: more than the socket buffers hold, so both sides wait for
    # writability while the other reads.
    big = bytes(range(256)) * (3 * 4096)
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, server_wrap, client_wrap) as (server, client):
            assert server.selected_alpn_protocol() == "x-test/1"
            assert client.selected_alpn_protocol() == "x-test/1"
            assert server.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
                pairs[1].cert.decode()
            )
            received: dict[str, bytes] = {}

            async def one_way(name: str, sender: Any, receiver: Any) -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender.send_all, big)

                    async def read() -> None:
                        received[name] = await _receive_exactly(receiver, len(big))

                    nursery.start_soon(read)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one_way, "to server", client, server)
                nursery.start_soon(one_way, "to client", server, client)
            assert received == {"to server": big, "to client": big}
            for i in range(50):  # many small round trips
                await client.send_all(b"ping %d" % i)
                assert await _receive_exactly(server, len(b"ping %d" % i)) == b"ping %d" % i
                await server.send_all(b"pong")
                assert await _receive_exactly(client, 4) == b"pong"


async def test_receive_respects_max_bytes_and_returns_the_rest_later(
    pairs: tuple[CertKeyPair, CertKeyPair],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, client):
            for i in range(5):
                await client.send_all(b"%d" % i * 10)
            await trio.testing.wait_all_tasks_blocked()
            first = await server.receive_some(7)
            assert len(first) == 7
            rest = await _receive_exactly(server, 50 - 7)
            assert first + rest == b"".join(b"%d" % i * 10 for i in range(5))
            with pytest.raises(ValueError, match="max_bytes"):
                await server.receive_some(0)


@pytest.mark.parametrize("closer_wrap", [_ours, _trios], ids=["ours", "trio"])
async def test_peer_close_reads_as_eof(
    pairs: tuple[CertKeyPair, CertKeyPair], closer_wrap: Wrap
) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, closer_wrap) as (server, client):
            await client.send_all(b"last words")
            await client.aclose()  # no close_notify: a ragged EOF, read as EOF
            assert await _receive_exactly(server, 10) == b"last words"
            assert await server.receive_some() == b""


async def test_a_second_concurrent_receiver_or_sender_is_refused(
    pairs: tuple[CertKeyPair, CertKeyPair],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await server.receive_some()
                await client.send_all(b"x")
            # A sender blocked on a full socket makes a second sender wait-free refused.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, b"y" * (8 * 1024 * 1024))
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await client.send_all(b"z")
                await _receive_exactly(server, 8 * 1024 * 1024)


async def test_cancelled_receive_loses_nothing(pairs: tuple[CertKeyPair, CertKeyPair]) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, client):
            with trio.move_on_after(0.01):
                await server.receive_some()
            await client.send_all(b"after the cancel")
            assert await _receive_exactly(server, 16) == b"after the cancel"


async def test_close_wakes_a_blocked_receiver_and_later_calls_fail(
    pairs: tuple[CertKeyPair, CertKeyPair],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, _client):
            async with trio.open_nursery() as nursery:

                async def blocked() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await server.receive_some()

                nursery.start_soon(blocked)
                await trio.testing.wait_all_tasks_blocked()
                await server.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await server.send_all(b"x")


async def test_an_untrusted_server_fails_the_handshake_as_broken(
    pairs: tuple[CertKeyPair, CertKeyPair],
) -> None:
    stranger = generate_cert_key_pair("stranger")
    with trio.fail_after(TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                tcp = await listeners[0].accept()
                server = TLSStream(tcp, server_ssl_context(stranger), server_side=True)
                with pytest.raises(trio.BrokenResourceError):
                    await server.do_handshake()
                await server.aclose()

            nursery.start_soon(serve)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = TLSStream(
                tcp,
                client_ssl_context(pairs[1], pairs[0].cert),
                server_hostname=pinned_server_name(pairs[0].cert),
            )
            with pytest.raises(trio.BrokenResourceError, match="handshake failed"):
                await client.do_handshake()
            with pytest.raises(trio.BrokenResourceError):  # and stays broken
                await client.send_all(b"x")
            await client.aclose()
        await listeners[0].aclose()


async def test_operations_checkpoint_once(pairs: tuple[CertKeyPair, CertKeyPair]) -> None:
    """A send the socket takes at once, and a receive of bytes that are already here,
    each yield to the scheduler exactly once (trio.SSLStream takes two or more)."""

    class Passes(trio.abc.Instrument):
        def __init__(self) -> None:
            self.count = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.count += 1

    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, client):
            await trio.testing.wait_all_tasks_blocked()
            passes = Passes()
            trio.lowlevel.add_instrument(passes)
            try:
                await client.send_all(b"hello")
                after_send = passes.count
                await trio.testing.wait_all_tasks_blocked()
                before_receive = passes.count
                assert await server.receive_some() == b"hello"
                after_receive = passes.count
            finally:
                trio.lowlevel.remove_instrument(passes)
            assert after_send == 1
            assert after_receive - before_receive == 1


async def test_send_nowait_sends_when_idle_and_holds_what_a_full_socket_refused(
    pairs: tuple[CertKeyPair, CertKeyPair],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with _connected(pairs, _ours, _ours) as (server, client):
            assert client.send_nowait(b"one") is True  # idle: written at once, no checkpoint
            assert await _receive_exactly(server, 3) == b"one"
            # A sender blocked on a full socket: busy, nothing done.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, b"y" * (8 * 1024 * 1024))
                await trio.testing.wait_all_tasks_blocked()
                assert not client.can_send_nowait()
                assert client.send_nowait(b"z") is None
                await _receive_exactly(server, 8 * 1024 * 1024)
            # The socket full with nobody sending: what it does not take is held, nothing
            # else may overtake it, and the next send_all writes it first.
            big = b"a" * (8 * 1024 * 1024)
            assert client.send_nowait(big) is False
            assert not client.can_send_nowait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, b"tail")
                assert await _receive_exactly(server, len(big) + 4) == big + b"tail"
            assert client.can_send_nowait()
