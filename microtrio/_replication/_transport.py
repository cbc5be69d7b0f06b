"""The Raft peer transport: batches of encoded Raft messages over mutual-TLS websockets.

Theory of operation
-------------------

Every member has one cluster address, the core listener (hypercorn, mutual TLS).
:func:`add_raft_route` mounts a websocket endpoint on it (``/core/internal/raft``).
Traffic is one-way per connection: member A dials B to send, B dials A to send, so
each ordered pair of members has its own connection and nothing is multiplexed.

Outbound (the sender side)
    :meth:`Transport.send` never blocks the Raft driver: it routes each message by
    ``msg.dst`` into that peer's bounded queue, and drops (and counts) a message when
    the queue is full; Raft tolerates loss. One sender task per peer, in the peer's
    own cancel scope, dials the peer (TLS with this member's certificate as client
    certificate, the cluster certificate pinned by the given SSL context), then
    loops: wait for a message, drain everything else already queued into one frame
    (up to the maximum frame size), send it. A background watcher notices a close
    by the remote side at once, so an idle link reconnects before it is needed.
    Any link failure ends the connection; the sender redials with exponential
    backoff and jitter (``backoff_min`` .. ``backoff_max``). Messages in flight on a
    failed connection are lost, again fine for Raft.

Inbound (the receiver side)
    The websocket handler refuses the upgrade (HTTP 403) unless one of the caller's
    client certificates, taken from the listener seam
    (``scope["extensions"]["tls"]["client_cert_chain"]``), passes ``is_trusted``; no
    certificate means refused. Each websocket message is one frame. An oversize
    frame closes the connection with 1009, text with 1003, a malformed frame or
    message with 1002; all are logged and counted, and never disturb other
    connections. Decoded messages go, in order, into one bounded inbound channel
    (back-pressure: a slow driver stops the reading, TCP pushes back, and the
    senders' queues drop).

Frame layout (big-endian)::

    magic "MTRF" | version u8 (=1) | flags u8 (=0) | sender node id u64 | count u32
    then ``count`` times: length u32 | encoded Raft message

Fault injection (:mod:`._faults`) is applied per message in the sender and, for
senders that do not apply it themselves, in the receiver.

Wiring (the daemon)::

    transport = Transport(
        node_id, codec=RAFT_CODEC, name=member_name,
        ssl_context=client_ssl_context(server_pair, cluster_cert),   # our cert + the pin
        config=TransportConfig(server_hostname=pinned_server_name(cluster_cert)),
        is_trusted=lambda der: ...truststore has this exact certificate...,
    )
    add_raft_route(core_app, transport)          # before the core listener serves
    await nursery.start(transport.run)
    transport.add_peer(peer_id, "10.0.0.2:8443")
    transport.send(ready.messages)               # after persisting, never blocks
    for msg in await transport.receive_batch():  # in the driver
        node.step(msg)

The frame size limit must stay at or below hypercorn's ``websocket_max_message_size``
(16 MiB by default) and above the largest Raft message (snapshot chunk size and the
entry batch limit of the core's config).
"""

from __future__ import annotations

import itertools
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, final

import trio
from quart import Quart, Response, websocket
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .._errors import (
    ForbiddenError,
    MicrotrioError,
    ProtocolError,
    UnavailableError,
    ValidationError,
)
from .._log import node_label
from ._faults import DROP, Faults
from ._frames import (
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEADER,
    FRAME_LENGTH,
    PING,
    RAFT_CODEC,
    RAFT_PATH,
    Frame,
    M,
    WireCodec,
    client_certificates,
    decode_frame,
    encode_frame,
    host_header,
    parse_address,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "RAFT_PATH",
    "Frame",
    "RAFT_CODEC",
    "PeerStatistics",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "WireCodec",
    "add_raft_route",
    "client_certificates",
    "decode_frame",
    "encode_frame",
    "parse_address",
]

logger = logging.getLogger("microtrio.replication.transport")


@dataclass(frozen=True, slots=True)
class TransportConfig:
    path: str = RAFT_PATH
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    peer_queue_size: int = 4096
    inbound_queue_size: int = 4096
    connect_timeout: float = 5.0
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    #: A link whose peer does not answer a websocket ping within ``ping_timeout``
    #: (pings every ``ping_interval`` seconds) is dropped and redialled.
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    #: Name checked against the peer's certificate (the pinned cluster certificate's
    #: first DNS SAN); None uses the address host. The SSL context decides whether
    #: names are checked at all.
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.max_frame_size < FRAME_HEADER.size + FRAME_LENGTH.size:
            raise ValidationError(f"max_frame_size {self.max_frame_size} is too small")
        if self.peer_queue_size < 1 or self.inbound_queue_size < 1:
            raise ValidationError("queue sizes must be at least 1")
        if not 0 < self.backoff_min <= self.backoff_max:
            raise ValidationError("need 0 < backoff_min <= backoff_max")
        if min(self.connect_timeout, self.ping_interval, self.ping_timeout) <= 0:
            raise ValidationError("timeouts and intervals must be positive")


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    node_id: int
    address: str
    connected: bool
    queued: int
    sent: int
    frames: int
    #: Lost on purpose: queue full, message larger than a frame, link failed with it.
    dropped: int
    fault_dropped: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    node_id: int
    peers: Mapping[int, PeerStatistics]
    unroutable: int
    inbound_connections: int
    received: int
    refused_connections: int
    protocol_errors: int
    fault_dropped: int


class _InboundSocket(Protocol):
    async def receive(self) -> str | bytes: ...

    async def close(self, code: int, reason: str = "") -> None: ...


# -- the transport ------------------------------------------------------------


class _Peer(Generic[M]):
    def __init__(self, node_id: int, address: str, queue_size: int) -> None:
        self.node_id = node_id
        self.address = address
        self.send_channel, self.receive_channel = trio.open_memory_channel[tuple[float, M]](
            queue_size
        )
        self.scope = trio.CancelScope()
        self.carry: bytes | None = None
        #: A message whose fault delay is not over yet: it starts the next frame.
        self.held: tuple[float, M] | None = None
        self.connected = False
        self.failures = self.sent = self.frames = self.dropped = 0
        self.fault_dropped = self.reconnects = 0

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            node_id=self.node_id,
            address=self.address,
            connected=self.connected,
            queued=self.send_channel.statistics().current_buffer_used,
            sent=self.sent,
            frames=self.frames,
            dropped=self.dropped,
            fault_dropped=self.fault_dropped,
            reconnects=self.reconnects,
        )


@final
class Transport(Generic[M]):
    """Raft traffic to and from the other members (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        *,
        codec: WireCodec[M],
        ssl_context: ssl.SSLContext,
        is_trusted: Callable[[bytes], bool],
        config: TransportConfig | None = None,
        faults: Faults | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValidationError(f"node id must be positive, got {node_id}")
        self.node_id = node_id
        self.config = config if config is not None else TransportConfig()
        self.is_trusted = is_trusted
        self._codec = codec
        self._ssl_context = ssl_context
        self._server_hostname = self.config.server_hostname
        self._faults = faults
        if faults is not None:
            faults.attach(node_id)
        self._rng = rng if rng is not None else random.Random()
        self._name = name if name is not None else f"node-{node_id}"
        self._peers: dict[int, _Peer[M]] = {}
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[M](
            self.config.inbound_queue_size
        )
        # Accepted inbound connections: their cancel scope -> the client's certificates.
        self._inbound: dict[trio.CancelScope, tuple[bytes, ...]] = {}
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._unroutable = 0
        self._received = 0
        self._refused = 0
        self._protocol_errors = 0
        self._fault_dropped = 0

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the per-peer sender tasks until cancelled or :meth:`aclose`."""
        if self._closed or self._nursery is not None:
            raise UnavailableError("transport is closed or already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in self._peers.values():
                    nursery.start_soon(self._peer_task, peer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._close()

    async def aclose(self) -> None:
        """Stop: cancel every sender, drop every inbound connection, end ``receive``."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        logger.debug("%s: raft transport closing", self._name)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            self._nursery = None
        for peer in self._peers.values():
            peer.scope.cancel()
        for scope in self._inbound:
            scope.cancel()
        self._inbound_send.close()
        if self._faults is not None:
            self._faults.detach(self.node_id)

    # -- peers --

    def add_peer(self, node_id: int, address: str) -> None:
        """Start sending to ``node_id`` at ``address`` (replaces a different address)."""
        if node_id == self.node_id or node_id <= 0:
            raise ValidationError(f"cannot add peer {node_id} to node {self.node_id}")
        parse_address(address)
        existing = self._peers.get(node_id)
        if existing is not None:
            if existing.address == address:
                return
            self.remove_peer(node_id)
        peer = _Peer[M](node_id, address, self.config.peer_queue_size)
        self._peers[node_id] = peer
        logger.info("%s: raft peer %s at %s added", self._name, node_label(node_id), address)
        if self._nursery is not None:
            self._nursery.start_soon(self._peer_task, peer)

    def remove_peer(self, node_id: int) -> None:
        """Stop sending to ``node_id``: cancels that peer's tasks only."""
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        peer.scope.cancel()
        logger.info("%s: raft peer %s removed", self._name, node_label(node_id))

    def set_client_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Use a new client context (e.g. a new cluster certificate) for later dials."""
        self._ssl_context, self._server_hostname = ssl_context, server_hostname

    def peers(self) -> dict[int, str]:
        return {node_id: peer.address for node_id, peer in self._peers.items()}

    # -- traffic --

    def send(self, messages: Iterable[M]) -> None:
        """Queue messages for their ``dst`` peers; never blocks, drops when a queue is full."""
        if self._closed:
            return
        stamp = 0.0
        if self._faults is not None and self._faults.enabled:
            stamp = trio.current_time()
        for msg in messages:
            peer = self._peers.get(msg.dst)
            if peer is None:
                self._unroutable += 1
                logger.debug("%s: no raft peer %d, message dropped", self._name, msg.dst)
                continue
            try:
                peer.send_channel.send_nowait((stamp, msg))
            except trio.WouldBlock:
                peer.dropped += 1

    async def receive(self) -> M:
        """The next inbound message; :class:`UnavailableError` once the transport closed."""
        try:
            return await self._inbound_receive.receive()
        except trio.EndOfChannel:
            raise UnavailableError("raft transport is closed") from None

    async def receive_batch(self, limit: int = 1024) -> list[M]:
        """Wait for one inbound message, then take up to ``limit`` already queued."""
        batch = [await self.receive()]
        while len(batch) < limit:
            try:
                batch.append(self._inbound_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[M]:
        """The inbound messages as a channel (ends when the transport closes)."""
        return self._inbound_receive

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            node_id=self.node_id,
            peers={node_id: peer.statistics() for node_id, peer in self._peers.items()},
            unroutable=self._unroutable,
            inbound_connections=len(self._inbound),
            received=self._received,
            refused_connections=self._refused,
            protocol_errors=self._protocol_errors,
            fault_dropped=self._fault_dropped,
        )

    # -- sender side --

    async def _peer_task(self, peer: _Peer[M]) -> None:
        backoff = self.config.backoff_min
        with peer.scope:
            while True:
                try:
                    await self._connect_and_pump(peer)
                except MicrotrioError as exc:
                    # Say it once per outage (louder if the peer refuses us), then quietly.
                    level = logging.DEBUG
                    if not peer.failures:
                        refused = isinstance(exc, ForbiddenError | ProtocolError)
                        level = logging.WARNING if refused else logging.INFO
                    logger.log(
                        level,
                        "%s: raft link to %s down: %s",
                        self._name,
                        node_label(peer.node_id),
                        exc,
                    )
                if not peer.failures:  # it had connected (or this is the first try)
                    backoff = self.config.backoff_min
                peer.failures += 1
                await trio.sleep(backoff * (0.5 + 0.5 * self._rng.random()))
                backoff = min(backoff * 2, self.config.backoff_max)
                peer.reconnects += 1

    async def _connect_and_pump(self, peer: _Peer[M]) -> None:
        host, port = parse_address(peer.address)
        stream: trio.SSLStream[trio.SocketStream] | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self.config.connect_timeout):
                    stream = await self._open_tls(host, port)
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        host_header(host, port),
                        self.config.path,
                        extra_headers=[(b"X-Microtrio-Raft-Version", b"1")],
                    )
                peer.connected, peer.failures = True, 0
                logger.debug("%s: raft link to %d connected", self._name, peer.node_id)
                nursery.start_soon(self._watch_closed, ws)
                nursery.start_soon(self._keepalive, ws)
                await self._pump(peer, ws)
        except BaseException as exc:
            mapped = _map_link_error(exc)
            if mapped is None:
                raise
            # Our own errors (from the watcher or keepalive) are raised as they are.
            raise mapped from (None if mapped in _leaves(exc) else exc)
        finally:
            peer.connected = False
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _open_tls(self, host: str, port: int) -> trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(host, port)
        name = self._server_hostname or host
        stream = trio.SSLStream(tcp, self._ssl_context, server_hostname=name, https_compatible=True)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    @staticmethod
    async def _watch_closed(ws: WebSocketConnection) -> None:
        # The remote end never sends data; this returns only when the link closes.
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            raise UnavailableError(f"closed by the peer: {exc.reason}") from None
        raise ProtocolError("the peer sent data on the raft channel")

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        for n in itertools.count():
            await trio.sleep(self.config.ping_interval)
            with trio.move_on_after(self.config.ping_timeout) as scope:
                await ws.ping(PING.pack(n))
            if scope.cancelled_caught:
                raise UnavailableError(f"no pong within {self.config.ping_timeout} s")

    async def _pump(self, peer: _Peer[M], ws: WebSocketConnection) -> None:
        while True:
            payloads = await self._next_batch(peer)
            try:
                await ws.send_message(encode_frame(self.node_id, payloads))
            except ConnectionClosed:
                peer.dropped += len(payloads)
                raise
            peer.sent += len(payloads)
            peer.frames += 1

    async def _next_batch(self, peer: _Peer[M]) -> list[bytes]:
        """Wait for one message, then take every queued one that fits in a frame."""
        limit = self.config.max_frame_size
        payloads: list[bytes] = []
        size = FRAME_HEADER.size
        if peer.carry is not None:
            payloads.append(peer.carry)
            size += FRAME_LENGTH.size + len(peer.carry)
            peer.carry = None
        while True:
            if peer.held is not None:
                due, msg = peer.held
                if payloads and due > trio.current_time():
                    return payloads
                peer.held = None
                await trio.sleep_until(due)
            else:
                if payloads:
                    try:
                        stamp, msg = peer.receive_channel.receive_nowait()
                    except trio.WouldBlock:
                        return payloads
                else:
                    stamp, msg = await peer.receive_channel.receive()
                if self._faults is not None and self._faults.enabled:
                    fate = self._faults.decide(self.node_id, peer.node_id)
                    if fate == DROP:
                        peer.fault_dropped += 1
                        continue
                    # Only the frame's first message waits here; a later one not yet due
                    # starts the next frame (waiting for it would hold back the frame,
                    # and under a steady stream of messages it would never leave).
                    if payloads and stamp + fate > trio.current_time():
                        peer.held = (stamp + fate, msg)
                        return payloads
                    await trio.sleep_until(stamp + fate)
            payload = self._codec.encode(msg)
            need = FRAME_LENGTH.size + len(payload)
            if FRAME_HEADER.size + need > limit:
                peer.dropped += 1
                logger.warning("%s: %d-byte raft message too big, dropped", self._name, need)
                continue
            if size + need > limit:
                peer.carry = payload
                return payloads
            payloads.append(payload)
            size += need

    # -- receiver side --

    def accepts(self, scope: Mapping[str, Any]) -> bool:
        """The trust decision for an inbound upgrade (see :func:`client_certificates`)."""
        trusted = any(self.is_trusted(der) for der in client_certificates(scope))
        if not trusted:
            self._refused += 1
            client = scope.get("client")
            logger.warning("%s: refused raft peer %s: no trusted certificate", self._name, client)
        return trusted

    def revalidate_inbound(self) -> int:
        """Drop inbound connections whose certificates are no longer trusted (call it
        after the truststore changed); returns how many were dropped."""
        stale = [s for s, certs in self._inbound.items() if not any(map(self.is_trusted, certs))]
        for scope in stale:
            scope.cancel()
        if stale:
            logger.info("%s: dropped %d untrusted raft connections", self._name, len(stale))
        return len(stale)

    async def handle_inbound(
        self, socket: _InboundSocket, certificates: Iterable[bytes] = ()
    ) -> None:
        """Receive frames from one accepted connection until it ends or we close.

        ``certificates`` (DER) are those the connection was trusted for, kept for
        :meth:`revalidate_inbound`.
        """
        if self._closed:
            await socket.close(CLOSE_GOING_AWAY, "transport closed")
            return
        with trio.CancelScope() as scope:
            self._inbound[scope] = tuple(certificates)
            try:
                await self._receive_frames(socket)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the inbound channel closed under us: we are shutting down
            finally:
                del self._inbound[scope]

    async def _receive_frames(self, socket: _InboundSocket) -> None:
        if self._faults is None:
            await self._receive_loop(socket, None)
            return
        # With fault rules possible, frames go through a delivery task that applies the
        # receiver's delays, each from the frame's own arrival: sleeping in the receive loop
        # would hold every later frame too, so delays would add up frame after frame.
        send, receive = trio.open_memory_channel[tuple[float, int, list[M]]](1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver_with_faults, self._faults, receive, nursery)
            async with send:
                await self._receive_loop(socket, send)

    async def _receive_loop(
        self,
        socket: _InboundSocket,
        delayed: trio.MemorySendChannel[tuple[float, int, list[M]]] | None,
    ) -> None:
        while True:
            data = await socket.receive()
            try:
                messages, sender = self._decode(data)
            except _Refusal as refusal:
                self._protocol_errors += 1
                logger.warning("%s: raft connection dropped: %s", self._name, refusal.reason)
                await socket.close(refusal.code, refusal.reason[:120])
                return
            if delayed is not None:  # in order, behind frames still being delayed
                await delayed.send((trio.current_time(), sender, messages))
            else:
                await self._deliver(messages)

    async def _deliver_with_faults(
        self,
        faults: Faults,
        frames: trio.MemoryReceiveChannel[tuple[float, int, list[M]]],
        nursery: trio.Nursery,
    ) -> None:
        async with frames:
            try:
                async for arrival, sender, messages in frames:
                    if faults.enabled and faults.applies_on_receive(sender):
                        messages = await self._inbound_faults(faults, sender, arrival, messages)
                    await self._deliver(messages)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # the inbound channel closed under us (we are shutting down): end this
                # connection as the direct path does, not with an exception group
                nursery.cancel_scope.cancel()

    async def _deliver(self, messages: list[M]) -> None:
        for msg in messages:
            self._received += 1
            try:
                self._inbound_send.send_nowait(msg)
            except trio.WouldBlock:
                await self._inbound_send.send(msg)

    def _decode(self, data: str | bytes | None) -> tuple[list[M], int]:
        if isinstance(data, str):
            raise _Refusal(CLOSE_UNSUPPORTED_DATA, "text message on the raft channel")
        if not isinstance(data, bytes):
            raise _Refusal(CLOSE_PROTOCOL_ERROR, "empty message on the raft channel")
        limit = self.config.max_frame_size
        if len(data) > limit:
            raise _Refusal(CLOSE_TOO_BIG, f"frame of {len(data)} bytes exceeds {limit}")
        try:
            frame = decode_frame(data, max_size=limit)
        except ProtocolError as exc:
            raise _Refusal(CLOSE_PROTOCOL_ERROR, f"malformed frame: {exc}") from exc
        try:
            messages = [self._codec.decode(payload) for payload in frame.payloads]
        except self._codec.errors as exc:
            raise _Refusal(CLOSE_PROTOCOL_ERROR, f"undecodable message: {exc}") from exc
        for msg in messages:
            if msg.dst != self.node_id or msg.src != frame.sender:
                raise _Refusal(
                    CLOSE_PROTOCOL_ERROR,
                    f"message {msg.src}->{msg.dst} in a frame from {frame.sender} to us",
                )
        return messages, frame.sender

    async def _inbound_faults(
        self, faults: Faults, sender: int, arrival: float, messages: list[M]
    ) -> list[M]:
        kept = []
        for msg in messages:
            fate = faults.decide(sender, self.node_id)
            if fate == DROP:
                self._fault_dropped += 1
                continue
            await trio.sleep_until(arrival + fate)
            kept.append(msg)
        return kept


class _Refusal(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- error mapping at the seam -----------------------------------------------


_LINK_ERRORS: Final = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    HandshakeError,
    ConnectionClosed,
    MicrotrioError,
)


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def _map_link_error(exc: BaseException) -> MicrotrioError | None:
    """Our error for a failed link, or None when ``exc`` is not a link failure."""
    leaves = list(_leaves(exc))
    if not leaves or not all(isinstance(leaf, _LINK_ERRORS) for leaf in leaves):
        return None
    first = leaves[0]
    if isinstance(first, MicrotrioError):
        return first
    if isinstance(first, ConnectionRejected):
        if first.status_code == 403:
            return ForbiddenError("the peer does not trust our certificate (HTTP 403)")
        return ProtocolError(f"the peer refused the raft channel (HTTP {first.status_code})")
    if isinstance(first, trio.TooSlowError):
        return UnavailableError("connect timed out")
    return UnavailableError(f"link failed: {first!r}")


# -- the route on the core listener -------------------------------------------


class _QuartInbound:
    async def receive(self) -> str | bytes:
        return await websocket.receive()

    async def close(self, code: int, reason: str = "") -> None:
        await websocket.close(code, reason)


def add_raft_route(app: Quart, transport: Transport[Any]) -> None:
    """Mount the Raft websocket endpoint (``transport.config.path``) on ``app``."""

    async def raft_channel() -> Response | None:
        if transport.closed:
            return Response("raft transport is closed", status=503)
        if not transport.accepts(websocket.scope):
            return Response("forbidden: untrusted client certificate", status=403)
        await websocket.accept()
        await transport.handle_inbound(_QuartInbound(), client_certificates(websocket.scope))
        return None

    app.add_websocket(transport.config.path, "microtrio_raft", raft_channel)
