"""The Raft peer transport over real TLS on the core listener seam (serve_tcp), in one trio.run."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from quart_trio import QuartTrio

from microtrio import _tls
from microtrio._api._listener import serve_tcp
from microtrio._certs import (
    CertKeyPair,
    SSLContextHolder,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
)
from microtrio._errors import UnavailableError, ValidationError
from microtrio._replication._faults import Faults
from microtrio._replication._frames import (
    CORE_ALPN_PROTOCOLS,
    FRAME_LENGTH,
    GOODBYE_FORBIDDEN,
    GOODBYE_GOING_AWAY,
    GOODBYE_PROTOCOL_ERROR,
    GOODBYE_TOO_BIG,
    KEEPALIVE,
    RAFT_ALPN,
    RecordReader,
    decode_goodbye,
    encode_record,
)
from microtrio._replication._transport import (
    RAFT_CODEC,
    Transport,
    TransportConfig,
    encode_frame,
)
from microtrio.raft import Message, MsgHeartbeat, MsgReadIndex, encode_message

CEILING = 20.0  # seconds; every test runs under this trio.fail_after
FAST = TransportConfig(backoff_min=0.01, backoff_max=0.1, connect_timeout=5.0)


@dataclass(frozen=True)
class Pki:
    cluster: CertKeyPair
    members: dict[int, CertKeyPair]
    stranger: CertKeyPair

    def trusted(self) -> set[bytes]:
        return {pair.der for pair in self.members.values()}

    def client_context(self, pair: CertKeyPair | None) -> ssl.SSLContext:
        return client_ssl_context(pair, self.cluster.cert)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(
        cluster=generate_cert_key_pair("microtrio-cluster"),
        members={i: generate_cert_key_pair(f"member{i}") for i in (1, 2, 3)},
        stranger=generate_cert_key_pair("stranger"),
    )


async def _not_found(path: str) -> tuple[str, int]:
    return "not found", 404


class Member:
    def __init__(
        self,
        node_id: int,
        pki: Pki,
        *,
        config: TransportConfig = FAST,
        faults: Faults | None = None,
        client_pair: CertKeyPair | None = None,
    ) -> None:
        self.trusted = trusted = pki.trusted()
        self.node_id = node_id
        self.transport = Transport[Message](
            node_id,
            codec=RAFT_CODEC,
            ssl_context=pki.client_context(client_pair or pki.members[node_id]),
            is_trusted=trusted.__contains__,
            config=TransportConfig(
                **{**_fields(config), "server_hostname": pinned_server_name(pki.cluster.cert)}
            ),
            faults=faults,
            rng=random.Random(node_id),
            name=f"member{node_id}",
        )
        self.app = QuartTrio(f"member{node_id}")
        # Like the core API app: HTTP on the same listener, by ALPN http/1.1 or none.
        self.app.add_url_rule("/<path:path>", "any", _not_found, methods=["GET", "POST"])
        self.server_context = SSLContextHolder(pki.cluster, alpn_protocols=CORE_ALPN_PROTOCOLS)
        self.handlers = {RAFT_ALPN: self.transport.serve_stream}
        self.port = 0
        self.listener_scope = trio.CancelScope()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _listen(self, *, task_status: trio.TaskStatus[str]) -> None:
        with self.listener_scope:
            await serve_tcp(
                self.app,
                f"127.0.0.1:{self.port}",
                self.server_context,
                stream_handlers=self.handlers,
                task_status=task_status,
            )

    async def start_listener(self, nursery: trio.Nursery) -> None:
        self.listener_scope = trio.CancelScope()
        bound = await nursery.start(self._listen)
        self.port = int(bound.rpartition(":")[2])

    def stop_listener(self) -> None:
        self.listener_scope.cancel()


def _fields(config: TransportConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@asynccontextmanager
async def cluster(
    pki: Pki, ids: tuple[int, ...], **kwargs: Any
) -> AsyncIterator[tuple[trio.Nursery, dict[int, Member]]]:
    async with trio.open_nursery() as nursery:
        members = {i: Member(i, pki, **kwargs) for i in ids}
        for member in members.values():
            await member.start_listener(nursery)
            await nursery.start(member.transport.run)
        for a in ids:
            for b in ids:
                if a != b:
                    members[a].transport.add_peer(b, members[b].address)
        yield nursery, members
        nursery.cancel_scope.cancel()


def raft_context(context: ssl.SSLContext) -> ssl.SSLContext:
    context.set_alpn_protocols([RAFT_ALPN])
    return context


@asynccontextmanager
async def raw_client(
    port: int, context: ssl.SSLContext
) -> AsyncIterator[trio.SSLStream[trio.SocketStream]]:
    """A bare TLS client (ALPN: whatever ``context`` offers) that always closes its socket."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1", https_compatible=True)
    try:
        await stream.do_handshake()
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


async def read_goodbye(stream: trio.abc.Stream) -> int | None:
    """What the receiver says before it closes: the goodbye code, None for a bare close.
    Pongs on the way are skipped; after a goodbye the stream must end."""
    reader = RecordReader(1024)
    while True:
        data = await stream.receive_some(4096)
        if not data:
            return None
        for record in reader.feed(data):
            if record:
                code, _ = decode_goodbye(record)
                while await stream.receive_some(4096):  # nothing after it but the end
                    raise AssertionError("data after a goodbye")
                return code


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll statistics() until a condition holds (the test's fail_after bounds it)."""
    while not predicate():  # noqa: ASYNC110 - statistics have no change event
        await trio.sleep(0.005)


def hb(src: int, dst: int, seq: int) -> MsgHeartbeat:
    return MsgHeartbeat(src=src, dst=dst, term=1, commit=seq)


async def receive_n(transport: Transport[Message], n: int) -> list[Message]:
    return [await transport.receive() for _ in range(n)]


async def test_messages_flow_both_ways(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            m[1].transport.send([hb(1, 2, i) for i in range(1, 101)])
            m[2].transport.send([hb(2, 1, i) for i in range(1, 51)])
            assert await receive_n(m[2].transport, 100) == [hb(1, 2, i) for i in range(1, 101)]
            assert await receive_n(m[1].transport, 50) == [hb(2, 1, i) for i in range(1, 51)]
            stats = m[1].transport.statistics()
            assert stats.peers[2].sent == 100
            assert stats.peers[2].dropped == 0
            assert stats.received == 50
            assert m[2].transport.statistics().received == 100


async def test_three_members_full_mesh(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2, 3)) as (_, m):
            for a in m:
                m[a].transport.send([hb(a, b, 10 * a + b) for b in m if b != a])
            for b in m:
                got = await receive_n(m[b].transport, 2)
                assert sorted(got, key=lambda msg: msg.src) == [
                    hb(a, b, 10 * a + b) for a in sorted(m) if a != b
                ]


async def test_reconnects_after_the_remote_listener_restarts(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (nursery, m):
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            m[2].stop_listener()
            await wait_for(lambda: not link().connected)
            reconnects = link().reconnects
            await m[2].start_listener(nursery)  # same port
            await wait_for(lambda: link().connected)
            assert link().reconnects > reconnects
            m[1].transport.send([hb(1, 2, 2)])
            assert await m[2].transport.receive() == hb(1, 2, 2)


async def test_messages_queued_while_down_are_delivered_after_reconnect(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (nursery, m):
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await wait_for(lambda: link().connected)
            m[2].stop_listener()
            await wait_for(lambda: not link().connected)
            m[1].transport.send([hb(1, 2, i) for i in range(5)])
            assert link().queued == 5
            await m[2].start_listener(nursery)
            assert await receive_n(m[2].transport, 5) == [hb(1, 2, i) for i in range(5)]


async def _refusal(member: Member, context: ssl.SSLContext) -> int | None:
    async with raw_client(member.port, raft_context(context)) as stream:
        return await read_goodbye(stream)


async def test_untrusted_or_missing_client_certificate_is_refused(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            forbidden = GOODBYE_FORBIDDEN
            assert await _refusal(m[2], pki.client_context(pki.stranger)) == forbidden
            assert await _refusal(m[2], pki.client_context(None)) == forbidden
            assert m[2].transport.statistics().refused_connections == 2
            assert m[2].transport.statistics().inbound_connections == 1  # member 1's own
            # A trusted certificate is accepted on the same listener.
            trusted = raft_context(pki.client_context(pki.members[1]))
            async with raw_client(m[2].port, trusted) as stream:
                assert await stream.receive_some(4096) == KEEPALIVE  # the welcome
                await stream.send_all(encode_record(1, [encode_message(hb(1, 2, 7))]))
                assert await m[2].transport.receive() == hb(1, 2, 7)
                await stream.send_all(KEEPALIVE)  # a ping is answered with a pong
                assert await stream.receive_some(4096) == KEEPALIVE


async def test_a_transport_with_an_untrusted_certificate_never_delivers(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (2,)) as (nursery, m):
            intruder = Member(3, pki, client_pair=pki.stranger)
            await nursery.start(intruder.transport.run)
            intruder.transport.add_peer(2, m[2].address)
            intruder.transport.send([hb(3, 2, 1)])
            await wait_for(lambda: m[2].transport.statistics().refused_connections >= 2)
            link = intruder.transport.statistics().peers[2]
            assert not link.connected and link.sent == 0 and link.reconnects >= 1
            assert m[2].transport.statistics().received == 0
            with pytest.raises(trio.WouldBlock):
                m[2].transport.inbound.receive_nowait()


def _record(data: bytes) -> bytes:
    return FRAME_LENGTH.pack(len(data)) + data


async def test_bad_frames_close_that_connection_only(pki: Pki) -> None:
    small = TransportConfig(backoff_min=0.01, backoff_max=0.1, max_frame_size=64 * 1024)
    bad: list[tuple[bytes, int]] = [
        (_record(b"garbage, not a frame"), GOODBYE_PROTOCOL_ERROR),
        (_record(b"\0" * (100 * 1024)), GOODBYE_TOO_BIG),  # oversize
        (FRAME_LENGTH.pack(2**32 - 1), GOODBYE_TOO_BIG),  # refused from the length alone
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", GOODBYE_TOO_BIG),  # HTTP on the raft ALPN
        (_record(encode_frame(1, [b"\xffnot a raft message"])), GOODBYE_PROTOCOL_ERROR),
        (encode_record(1, [encode_message(hb(1, 3, 1))]), GOODBYE_PROTOCOL_ERROR),  # not to us
        (encode_record(3, [encode_message(hb(1, 2, 1))]), GOODBYE_PROTOCOL_ERROR),  # src != sender
    ]
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), config=small) as (_, m):
            trusted = raft_context(pki.client_context(pki.members[1]))
            for seq, (payload, code) in enumerate(bad, start=1):
                async with raw_client(m[2].port, trusted) as stream:
                    await stream.send_all(payload)
                    assert await read_goodbye(stream) == code, payload[:30]
                # The member's regular link keeps working after each bad connection.
                m[1].transport.send([hb(1, 2, seq)])
                assert await m[2].transport.receive() == hb(1, 2, seq)
            stats = m[2].transport.statistics()
            assert stats.protocol_errors == len(bad)
            assert stats.received == len(bad)
            assert m[1].transport.statistics().peers[2].reconnects == 0


async def test_http_still_served_and_raft_needs_its_alpn(pki: Pki) -> None:
    # The core listener serves HTTP (ALPN http/1.1, or none) beside the raft channel.
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            for alpn in (["http/1.1"], None):
                context = pki.client_context(pki.members[1])
                if alpn is not None:
                    context.set_alpn_protocols(alpn)
                async with raw_client(m[2].port, context) as stream:
                    assert stream.selected_alpn_protocol() == (alpn[0] if alpn else None)
                    await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                    head = await stream.receive_some(4096)
                    assert head.startswith(b"HTTP/1.1 404"), head[:40]
            assert m[2].transport.statistics().protocol_errors == 0


async def test_a_server_without_the_raft_protocol_fails_the_dial(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # A listener that offers HTTP only (e.g. a member too old, or another server): the
    # handshake succeeds without the raft protocol, and the sender gives up that dial.
    with trio.fail_after(CEILING):
        async with cluster(pki, (1,)) as (nursery, m):
            http_only = Member(2, pki)
            http_only.server_context = SSLContextHolder(pki.cluster)  # http/1.1 only
            await http_only.start_listener(nursery)
            m[1].transport.add_peer(2, http_only.address)
            m[1].transport.send([hb(1, 2, 1)])
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await wait_for(lambda: link().reconnects >= 3)
            assert not link().connected and link().sent == 0 and link().queued == 1
            assert http_only.transport.statistics().received == 0
            assert any("does not serve the raft channel" in r.getMessage() for r in caplog.records)


async def test_tcp_nodelay_on_both_ends(pki: Pki) -> None:
    import socket

    def nodelay(stream: trio.SocketStream) -> int:
        return int(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    seen: list[int] = []
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            serve = m[2].transport.serve_stream

            async def spy(stream: trio.SSLStream[trio.SocketStream], ext: Any) -> None:
                seen.append(nodelay(stream.transport_stream))
                await serve(stream, ext)

            m[2].handlers[RAFT_ALPN] = spy  # the listener reads the mapping per connection
            m[1].transport.remove_peer(2)
            m[1].transport.add_peer(2, m[2].address)
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            assert seen == [1]
            # The sender dials with trio.open_tcp_stream, which sets it too.
            client = await trio.open_tcp_stream("127.0.0.1", m[2].port)
            async with client:
                assert nodelay(client) == 1


async def test_oversize_message_is_dropped_by_the_sender(pki: Pki) -> None:
    small = TransportConfig(backoff_min=0.01, backoff_max=0.1, max_frame_size=4096)
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), config=small) as (_, m):
            big = MsgReadIndex(src=1, dst=2, term=0, ctx=b"x" * 8192)
            fits = [MsgReadIndex(src=1, dst=2, term=0, ctx=bytes([i]) * 1000) for i in range(9)]
            m[1].transport.send([big, *fits])
            assert await receive_n(m[2].transport, 9) == fits  # split over several frames
            link = m[1].transport.statistics().peers[2]
            assert link.dropped == 1
            assert link.frames >= 3


async def test_remove_peer_cancels_only_that_peer(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2, 3)) as (_, m):
            for b in (2, 3):
                m[1].transport.send([hb(1, b, 1)])
                assert await m[b].transport.receive() == hb(1, b, 1)
            m[2].transport.send([hb(2, 3, 1)])
            assert await m[3].transport.receive() == hb(2, 3, 1)
            assert m[3].transport.statistics().inbound_connections == 2

            m[1].transport.remove_peer(3)
            await wait_for(lambda: m[3].transport.statistics().inbound_connections == 1)
            assert 3 not in m[1].transport.statistics().peers
            m[1].transport.send([hb(1, 3, 2), hb(1, 2, 2)])
            assert m[1].transport.statistics().unroutable == 1
            assert await m[2].transport.receive() == hb(1, 2, 2)
            m[2].transport.send([hb(2, 3, 2)])
            assert await m[3].transport.receive() == hb(2, 3, 2)  # not from member 1


async def test_queue_is_bounded_and_drops_when_the_peer_stalls(pki: Pki) -> None:
    config = TransportConfig(peer_queue_size=8, connect_timeout=30.0)
    with trio.fail_after(CEILING):
        # A peer that accepts TCP connections but never answers the TLS handshake.
        (stalled,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with cluster(pki, (1,), config=config) as (_, m):
            port = stalled.socket.getsockname()[1]
            m[1].transport.add_peer(9, f"127.0.0.1:{port}")
            m[1].transport.send([hb(1, 9, i) for i in range(20)])
            link = m[1].transport.statistics().peers[9]
            assert (link.queued, link.dropped, link.sent) == (8, 12, 0)
        await stalled.aclose()


async def test_backpressure_from_a_slow_receiver_ends_in_counted_drops(pki: Pki) -> None:
    config = TransportConfig(peer_queue_size=64, inbound_queue_size=1, max_frame_size=256 * 1024)
    payload = b"p" * 16 * 1024
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), config=config) as (_, m):
            # Member 2's driver never reads: its transport stops reading, TCP fills up,
            # member 1's sender blocks and its bounded queue overflows.
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            batch = [MsgReadIndex(src=1, dst=2, term=0, ctx=payload) for _ in range(64)]
            offered = 0
            while link().dropped == 0:
                m[1].transport.send(batch)
                offered += 64
                assert link().queued <= 64
                await trio.sleep(0.001)
            # Every message is accounted for: written, queued, dropped, or in the frame
            # the blocked sender holds (at most a frame's worth and the one carried over).
            stats = link()
            in_hand = offered - stats.sent - stats.queued - stats.dropped
            assert 0 <= in_hand <= config.max_frame_size // len(payload) + 1
            # The queue stays at its bound and what does not fit is counted (no checkpoint
            # between the calls: the sender cannot take anything in between).
            queued = stats.queued
            m[1].transport.send(batch)
            after = link()
            assert (after.queued, after.dropped - stats.dropped) == (64, queued)
            assert m[2].transport.statistics().received <= 2


async def test_partition_blocks_and_healing_restores_flow(pki: Pki) -> None:
    faults = Faults(random.Random(1))
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), faults=faults) as (_, m):
            faults.block(1, 2)  # asymmetric: 2 -> 1 still flows
            m[1].transport.send([hb(1, 2, i) for i in range(5)])
            m[2].transport.send([hb(2, 1, 1)])
            assert await m[1].transport.receive() == hb(2, 1, 1)
            await wait_for(lambda: m[1].transport.statistics().peers[2].fault_dropped == 5)
            with pytest.raises(trio.WouldBlock):
                m[2].transport.inbound.receive_nowait()
            faults.heal()
            m[1].transport.send([hb(1, 2, 6)])
            assert await m[2].transport.receive() == hb(1, 2, 6)
            # Applied once: the shared Faults is not applied again by the receiver.
            assert m[2].transport.statistics().fault_dropped == 0


async def test_receiver_applies_faults_for_senders_without_them(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (nursery, m):
            faults = Faults(random.Random(2))
            receiver = Member(3, pki, faults=faults)
            await receiver.start_listener(nursery)
            await nursery.start(receiver.transport.run)
            m[1].transport.add_peer(3, receiver.address)
            m[2].transport.add_peer(3, receiver.address)
            faults.block(1, 3)
            m[1].transport.send([hb(1, 3, 1), hb(1, 3, 2)])
            m[2].transport.send([hb(2, 3, 1)])
            assert await receiver.transport.receive() == hb(2, 3, 1)
            await wait_for(lambda: receiver.transport.statistics().fault_dropped == 2)
            faults.heal()
            m[1].transport.send([hb(1, 3, 3)])
            assert await receiver.transport.receive() == hb(1, 3, 3)
            faults.set_link(1, 3, delay=0.2)
            start = trio.current_time()
            m[1].transport.send([hb(1, 3, 4), hb(1, 3, 5)])
            assert await receive_n(receiver.transport, 2) == [hb(1, 3, 4), hb(1, 3, 5)]
            assert 0.2 <= trio.current_time() - start


async def test_receiver_delays_do_not_add_up_across_frames(pki: Pki) -> None:
    # A receiver applying a delay (the sender is another process) must delay each frame
    # from its own arrival, not hold the connection: serially, eight frames would take at
    # least 8 x 0.5 s, and a link with one frame per heartbeat would fall ever further behind.
    delay, frames = 0.5, 8
    with trio.fail_after(CEILING):
        async with cluster(pki, (1,)) as (nursery, m):
            faults = Faults(random.Random(4))
            receiver = Member(2, pki, faults=faults)
            await receiver.start_listener(nursery)
            await nursery.start(receiver.transport.run)
            m[1].transport.add_peer(2, receiver.address)
            m[1].transport.send([hb(1, 2, 0)])
            assert await receiver.transport.receive() == hb(1, 2, 0)  # connected, no delay
            faults.set_link(1, 2, delay=delay)
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            start = trio.current_time()
            for i in range(1, frames + 1):
                sent = link().frames
                m[1].transport.send([hb(1, 2, i)])
                await wait_for(lambda sent=sent: link().frames > sent)  # one frame each
            received = await receive_n(receiver.transport, frames)
            elapsed = trio.current_time() - start
            assert [msg.commit for msg in received] == list(range(1, frames + 1))
            assert delay <= elapsed < frames * delay - 0.5


async def test_sender_delay_under_a_steady_stream_still_sends(pki: Pki) -> None:
    # Messages keep coming faster than the delay (heartbeats every tick under a 100 ms
    # delay): each must leave when its own delay is over, not once the stream pauses.
    faults = Faults(random.Random(5))
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), faults=faults) as (nursery, m):
            m[1].transport.send([hb(1, 2, 0)])
            assert await m[2].transport.receive() == hb(1, 2, 0)
            faults.set_link(1, 2, delay=0.3)
            streaming = True

            async def stream() -> None:
                nonlocal streaming
                for i in range(1, 61):  # 3 s of messages, one every 50 ms
                    m[1].transport.send([hb(1, 2, i)])
                    await trio.sleep(0.05)
                streaming = False

            nursery.start_soon(stream)
            assert await m[2].transport.receive() == hb(1, 2, 1)
            assert streaming, "the first delayed message waited for the stream to stop"
            rest = await receive_n(m[2].transport, 59)
            assert [msg.commit for msg in rest] == list(range(2, 61))


async def test_delay_and_drop_faults(pki: Pki) -> None:
    faults = Faults(random.Random(3))
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), faults=faults) as (_, m):
            faults.set_link(1, 2, delay=0.3)
            start = trio.current_time()
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            assert trio.current_time() - start >= 0.3
            faults.set_link(1, 2, delay=0.0, drop=0.5)
            m[1].transport.send([hb(1, 2, i) for i in range(200)])
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await wait_for(lambda: link().sent + link().fault_dropped == 201)
            received = await receive_n(m[2].transport, link().sent - 1)
            assert 40 < len(received) < 160
            assert [msg.commit for msg in received] == sorted(msg.commit for msg in received)


async def test_aclose_is_prompt_and_ends_receive(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            with trio.fail_after(2):
                await m[2].transport.aclose()
                await wait_for(lambda: not m[1].transport.statistics().peers[2].connected)
            with pytest.raises(UnavailableError):
                await m[2].transport.receive()
            # The listener now says "going away" rather than accepting.
            refusal = await _refusal(m[2], pki.client_context(pki.members[1]))
            assert refusal == GOODBYE_GOING_AWAY


async def test_pipelined_batch_is_delivered_in_order(pki: Pki) -> None:
    n, chunk = 5000, 500
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (nursery, m):
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await wait_for(lambda: link().connected)
            received: list[Message] = []

            async def drain() -> None:
                while len(received) < n:
                    received.extend(await m[2].transport.receive_batch(limit=1000))

            async with trio.open_nursery() as inner:
                inner.start_soon(drain)
                for start in range(0, n, chunk):
                    # Keep within the queue bound: this test is about order, not drops.
                    await wait_for(lambda: link().queued <= FAST.peer_queue_size - chunk)
                    m[1].transport.send([hb(1, 2, i) for i in range(start, start + chunk)])
            assert [msg.commit for msg in received] == list(range(n))  # type: ignore[union-attr]
            assert link().dropped == 0
            assert link().frames < n


async def test_peer_changes_and_misuse(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        (stalled,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        stalled_address = f"127.0.0.1:{stalled.socket.getsockname()[1]}"
        async with cluster(pki, (1, 2)) as (_, m):
            t1 = m[1].transport
            with pytest.raises(ValidationError):
                t1.add_peer(1, m[2].address)  # ourselves
            with pytest.raises(ValidationError):
                t1.add_peer(5, "not an address:x")
            with pytest.raises(UnavailableError):
                await t1.run()  # already running
            # Re-pointing a peer replaces its sender: first at a dead end, then back.
            t1.add_peer(2, stalled_address)
            t1.send([hb(1, 2, 1)])
            assert t1.statistics().peers[2].queued == 1
            t1.add_peer(2, m[2].address)
            assert t1.peers() == {2: m[2].address}
            t1.send([hb(1, 2, 2)])
            assert await m[2].transport.receive() == hb(1, 2, 2)
        await stalled.aclose()


async def test_unreachable_peer_is_retried_with_capped_backoff(pki: Pki) -> None:
    config = TransportConfig(backoff_min=0.01, backoff_max=0.02)
    with trio.fail_after(CEILING):
        (closed,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        address = f"127.0.0.1:{closed.socket.getsockname()[1]}"
        await closed.aclose()  # nothing listens there any more
        async with cluster(pki, (1,), config=config) as (_, m):
            m[1].transport.add_peer(2, address)
            await wait_for(lambda: m[1].transport.statistics().peers[2].reconnects >= 5)
            assert not m[1].transport.statistics().peers[2].connected


class FreezingProxy:
    """A TCP relay that can stop forwarding without closing anything (a silent peer)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.thawed = trio.Event()
        self.thawed.set()

    def freeze(self) -> None:
        self.thawed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listener.socket.getsockname()[1])
        await trio.serve_listeners(self._relay, [listener])

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pipe, server, client, nursery.cancel_scope)

    async def _pipe(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in src:
                await self.thawed.wait()
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def test_a_silent_peer_is_detected_by_ping_and_redialled(pki: Pki) -> None:
    config = TransportConfig(
        backoff_min=0.01,
        backoff_max=0.05,
        connect_timeout=0.5,
        ping_interval=0.05,
        ping_timeout=0.3,
    )
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), config=config) as (nursery, m):
            proxy = FreezingProxy(m[2].port)
            port = await nursery.start(proxy.serve)
            m[1].transport.add_peer(2, f"127.0.0.1:{port}")
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            reconnects = link().reconnects
            proxy.freeze()  # the TCP connection stays open, nothing gets through
            await wait_for(lambda: link().reconnects > reconnects)
            assert not link().connected
            proxy.thawed.set()
            await wait_for(lambda: link().connected)
            m[1].transport.send([hb(1, 2, 2)])
            assert await m[2].transport.receive() == hb(1, 2, 2)


async def test_a_silent_inbound_connection_is_closed(pki: Pki) -> None:
    # A sender that vanished without a FIN (no pings any more) must not hold a connection
    # slot forever: closed after 2 * ping_interval + ping_timeout (0.2 s here) of silence.
    config = TransportConfig(
        backoff_min=0.01, backoff_max=0.1, ping_interval=0.05, ping_timeout=0.1
    )
    with trio.fail_after(CEILING):
        async with cluster(pki, (2,), config=config) as (_, m):
            trusted = raft_context(pki.client_context(pki.members[1]))
            async with raw_client(m[2].port, trusted) as stream:
                assert await stream.receive_some(4096) == KEEPALIVE  # the welcome
                assert await read_goodbye(stream) is None  # then silence, then closed
            stats = m[2].transport.statistics()
            assert stats.idle_closed == 1 and stats.protocol_errors == 0


async def test_a_receiver_held_up_by_back_pressure_is_not_idle(pki: Pki) -> None:
    # The receiver stops reading while its driver is slow: that is back-pressure, not a
    # silent sender, however long it lasts (here three idle periods).
    slow = TransportConfig(inbound_queue_size=1, ping_interval=0.25, ping_timeout=0.5)
    with trio.fail_after(CEILING):
        async with cluster(pki, (1,)) as (nursery, m):
            receiver = Member(2, pki, config=slow)
            await receiver.start_listener(nursery)
            await nursery.start(receiver.transport.run)
            m[1].transport.add_peer(2, receiver.address)
            m[1].transport.send([hb(1, 2, i) for i in range(20)])
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await wait_for(lambda: link().sent == 20)
            await trio.sleep(3 * slow.idle_timeout)  # the driver is busy elsewhere
            assert await receive_n(receiver.transport, 20) == [hb(1, 2, i) for i in range(20)]
            assert receiver.transport.statistics().idle_closed == 0
            assert link().connected and link().reconnects == 0


async def test_revoked_trust_drops_the_inbound_connection(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            m[1].transport.send([hb(1, 2, 1)])
            assert await m[2].transport.receive() == hb(1, 2, 1)
            assert m[2].transport.revalidate_inbound() == 0
            m[2].trusted.discard(pki.members[1].der)  # member 1 removed from the truststore
            assert m[2].transport.revalidate_inbound() == 1
            await wait_for(lambda: m[2].transport.statistics().refused_connections >= 1)
            assert not m[1].transport.statistics().peers[2].connected
            m[1].transport.send([hb(1, 2, 2)])
            refused = m[2].transport.statistics().refused_connections
            await wait_for(lambda: m[2].transport.statistics().refused_connections > refused)
            link = m[1].transport.statistics().peers[2]
            assert (link.sent, link.queued) == (1, 1)  # redials are refused; it stays queued
            with pytest.raises(trio.WouldBlock):
                m[2].transport.inbound.receive_nowait()
            # Member 2 itself still reaches member 1.
            m[2].transport.send([hb(2, 1, 1)])
            assert await m[1].transport.receive() == hb(2, 1, 1)


class _OneFrameStream(trio.abc.Stream):
    """An accepted connection that delivers one frame, then stays open and silent."""

    def __init__(self, record: bytes) -> None:
        self.records = [record]

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.records:
            return self.records.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise AssertionError(f"wrote {bytes(data)!r}")

    async def wait_send_all_might_not_block(self) -> None:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("faults", [None, Faults(random.Random(6))], ids=["direct", "faults"])
async def test_inbound_ends_quietly_when_the_receiving_side_is_gone(
    pki: Pki, faults: Faults | None
) -> None:
    # Shutting down: nobody receives any more. Both paths (with and without fault rules)
    # end the connection's handler quietly, not with an error for the listener to log.
    member = Member(2, pki, faults=faults)
    await member.transport.inbound.aclose()
    record = encode_record(1, [encode_message(hb(1, 2, 1))])
    with trio.fail_after(CEILING):
        await member.transport.handle_inbound(_OneFrameStream(record))


# -- the direct path: send() writes to an idle link itself --------------------------------


async def idle_link(member: Member, dst: int) -> None:
    """Wait until ``member``'s sender task for ``dst`` is connected and waits empty-handed
    (then send() writes to the link itself)."""
    peer = member.transport._peers[dst]
    await wait_for(lambda: peer.link is not None and peer.idle)


async def test_messages_to_an_idle_link_leave_inside_send_as_one_frame(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await idle_link(m[1], 2)
            before = link()
            queued = m[1].transport.send([hb(1, 2, 1), hb(1, 2, 2)])
            after = link()  # no checkpoint since send(): nothing else ran
            assert not queued  # no sender task has anything to do
            assert (after.sent - before.sent, after.frames - before.frames) == (2, 1)
            assert after.queued == 0
            assert await receive_n(m[2].transport, 2) == [hb(1, 2, 1), hb(1, 2, 2)]
            # the sender task still works: while it is busy, messages queue behind it
            m[1].transport.send([hb(1, 2, i) for i in range(3, 203)])
            assert await receive_n(m[2].transport, 200) == [hb(1, 2, i) for i in range(3, 203)]
            assert link().dropped == 0


async def test_a_direct_frame_the_socket_took_in_part_is_finished_in_order(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = MsgReadIndex(src=1, dst=2, term=0, ctx=b"b" * 50_000)
    real_write = _tls.os.write
    partial: list[bool] = []

    def write(fd: int, data: bytes) -> int:
        if partial and len(data) > 10_000:  # the direct frame: the socket takes 100 bytes
            partial.pop()
            return real_write(fd, bytes(data)[:100])
        return real_write(fd, data)

    # no pings while the test runs: nothing but the sender task may write the rest
    quiet = TransportConfig(**{**_fields(FAST), "ping_interval": 3600.0})
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2), config=quiet) as (_, m):
            monkeypatch.setattr(_tls.os, "write", write)
            await idle_link(m[1], 2)
            partial.append(True)
            assert not m[1].transport.send([big])
            assert not partial  # it went the direct way, and only in part
            # the sender task is woken to write the rest, with nothing else sent
            assert await m[2].transport.receive() == big
            await idle_link(m[1], 2)
            partial.append(True)
            assert not m[1].transport.send([big])
            assert not partial
            # a message sent meanwhile is queued (the link is not idle) and comes after it
            assert m[1].transport.send([hb(1, 2, 1)])
            assert await receive_n(m[2].transport, 2) == [big, hb(1, 2, 1)]
            stats = m[1].transport.statistics().peers[2]
            assert (stats.sent, stats.dropped, stats.reconnects) == (3, 0, 0)


async def test_a_direct_write_that_fails_drops_the_frame_and_redials(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = _tls.os.write
    fail = [True]

    def write(fd: int, data: bytes) -> int:
        if fail:
            fail.clear()
            raise BrokenPipeError(32, "Broken pipe")
        return real_write(fd, data)

    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            link = lambda: m[1].transport.statistics().peers[2]  # noqa: E731
            await idle_link(m[1], 2)
            monkeypatch.setattr(_tls.os, "write", write)
            assert not m[1].transport.send([hb(1, 2, 1)])
            assert link().dropped == 1  # lost with the link, counted
            await wait_for(lambda: link().reconnects >= 1)
            m[1].transport.send([hb(1, 2, 2)])
            assert await m[2].transport.receive() == hb(1, 2, 2)
            assert link().connected
