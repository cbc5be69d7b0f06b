"""The Raft peer transport: batches of encoded Raft messages over mutual-TLS streams.

Theory of operation
-------------------

Every member has one cluster address, the core listener (mutual TLS). Besides HTTP it
offers the ALPN protocol :data:`RAFT_ALPN`; a connection that negotiates it is handed by
the listener, right after the TLS handshake, to :meth:`Transport.serve_stream` (the
listener's ``stream_handlers`` seam), and carries nothing but Raft traffic: no HTTP, no
websocket. Traffic is one-way per connection: member A dials B to send, B dials A to send,
so each ordered pair of members has its own connection and nothing is multiplexed.

On the stream (:mod:`._frames`): records, each a u32 length and that many bytes. The
sender writes frames (one record each) and, every ``ping_interval``, an empty record (a
ping); the receiver writes back only empty records (pongs) and, when it refuses or drops
the connection, one goodbye record (a code and a reason) before it closes. The
receiver's first record is the verdict: empty (welcome: the sender may start) or a
goodbye; a sender writes nothing before it.

Outbound (the sender side)
    :meth:`Transport.send` never blocks the Raft driver: it routes each message by
    ``msg.dst`` into that peer's bounded queue, and drops (and counts) a message when
    the queue is full; Raft tolerates loss. One sender task per peer, in the peer's
    own cancel scope, dials the peer (TCP with TCP_NODELAY, as trio's
    ``open_tcp_stream`` sets it; TLS with this member's certificate as client
    certificate, the cluster certificate pinned by the given SSL context, ALPN offering
    the Raft protocol only: a peer that does not select it fails the dial), then loops:
    wait for a message, drain everything else already queued into one frame (up to the
    maximum frame size), send it. While that task waits with nothing in hand on a
    connected link, :meth:`Transport.send` writes a message to the link itself instead
    (one frame; :meth:`TLSStream.send_nowait`, no checkpoint): the message leaves before
    ``send`` returns, and no task wakes for it (a wake-up and a scheduler pass saved on
    every hop, and the Raft loop need not yield to let the senders run). Order holds: the
    sender task is idle, so nothing queued is overtaken; bytes the socket did not take
    are written first by the sender task, which ``send`` wakes for them. A watcher task
    reads the reverse direction, so a close (or a goodbye) by the remote side is noticed
    at once and an idle link reconnects before it is needed; a keepalive task sends a
    ping every ``ping_interval`` and drops the link when no pong comes within
    ``ping_timeout`` (a silent peer). Any link failure ends the connection; the sender redials with
    exponential backoff and jitter (``backoff_min`` .. ``backoff_max``). Messages in
    flight on a failed connection are lost, again fine for Raft.

Inbound (the receiver side)
    :meth:`Transport.serve_stream` refuses the connection (goodbye "forbidden", then
    close) unless one of the caller's client certificates, from the listener seam
    (``extensions["tls"]["client_cert_chain"]``), passes ``is_trusted``; no
    certificate means refused. A record longer than ``max_frame_size`` (seen from its
    length, before its bytes are read), a malformed frame or an undecodable message, or
    a message not from the frame's sender to us, closes that connection with a goodbye;
    all are logged and counted, and never disturb other connections. A connection
    silent (not even pings) for ``2 * ping_interval + ping_timeout`` is closed (a sender
    that vanished without a FIN must not hold a connection slot forever). Decoded
    messages go, in order, into one bounded inbound channel (back-pressure: a slow
    driver stops the reading, TCP pushes back, and the senders' queues drop).
    :meth:`Transport.revalidate_inbound` closes the connections of members no longer
    trusted (after a truststore change).

Fault injection (:mod:`._faults`) is applied per message in the sender and, for
senders that do not apply it themselves, in the receiver.

Wiring (the daemon)::

    transport = Transport(
        node_id, codec=RAFT_CODEC, name=member_name,
        ssl_context=client_ssl_context(server_pair, cluster_cert),   # our cert + the pin
        config=TransportConfig(server_hostname=pinned_server_name(cluster_cert)),
        is_trusted=lambda der: ...truststore has this exact certificate...,
    )
    holder = SSLContextHolder(cluster_pair, alpn_protocols=CORE_ALPN_PROTOCOLS)
    nursery.start_soon(partial(serve_tcp, app, address, holder,
                               stream_handlers={RAFT_ALPN: transport.serve_stream}))
    await nursery.start(transport.run)
    transport.add_peer(peer_id, "10.0.0.2:8443")
    transport.send(ready.messages)               # after persisting, never blocks
    for msg in await transport.receive_batch():  # in the driver
        node.step(msg)

``ssl_context`` is the transport's own: it sets the context's ALPN list to the Raft
protocol (do not share it with an HTTP client). The frame size limit must stay above the
largest Raft message (snapshot chunk size and the entry batch limit of the core's config).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, final

import trio

from .._errors import (
    ForbiddenError,
    MicrotrioError,
    ProtocolError,
    UnavailableError,
    ValidationError,
)
from .._log import node_label
from .._tls import TLSStream
from ._faults import DROP, Faults
from ._frames import (
    CORE_ALPN_PROTOCOLS,
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEADER,
    FRAME_LENGTH,
    GOODBYE_FORBIDDEN,
    GOODBYE_GOING_AWAY,
    GOODBYE_MAX_SIZE,
    GOODBYE_PROTOCOL_ERROR,
    GOODBYE_TOO_BIG,
    KEEPALIVE,
    RAFT_ALPN,
    RAFT_CODEC,
    Frame,
    M,
    RecordReader,
    WireCodec,
    client_certificates,
    decode_frame,
    encode_frame,
    encode_record,
    parse_address,
)
from ._links import (
    RECEIVE_SIZE,
    Inbound,
    Link,
    goodbye_error,
    leaves,
    map_link_error,
    raft_client_context,
    refuse_stream,
    remote_address,
    wait_welcome,
)

__all__ = [
    "CORE_ALPN_PROTOCOLS",
    "DEFAULT_MAX_FRAME_SIZE",
    "RAFT_ALPN",
    "RAFT_CODEC",
    "Frame",
    "PeerStatistics",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "WireCodec",
    "client_certificates",
    "decode_frame",
    "encode_frame",
    "parse_address",
    "refuse_stream",
]

logger = logging.getLogger("microtrio.replication.transport")


@dataclass(frozen=True, slots=True)
class TransportConfig:
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    peer_queue_size: int = 4096
    inbound_queue_size: int = 4096
    connect_timeout: float = 5.0
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    #: A link whose peer does not answer a ping within ``ping_timeout`` (pings every
    #: ``ping_interval`` seconds) is dropped and redialled; an inbound connection silent
    #: for ``2 * ping_interval + ping_timeout`` is closed.
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

    @property
    def idle_timeout(self) -> float:
        """How long an inbound connection may stay silent (not even a ping)."""
        return 2 * self.ping_interval + self.ping_timeout


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
    #: Inbound connections closed because nothing (not even a ping) came for too long.
    idle_closed: int = 0


# -- the transport ------------------------------------------------------------


class _Peer(Generic[M]):
    def __init__(self, node_id: int, address: str, queue_size: int) -> None:
        self.node_id = node_id
        self.address = address
        # (stamp, message); a None message only asks the sender task to flush the link
        self.send_channel, self.receive_channel = trio.open_memory_channel[tuple[float, M | None]](
            queue_size
        )
        self.scope = trio.CancelScope()
        self.carry: bytes | None = None
        #: A message whose fault delay is not over yet: it starts the next frame.
        self.held: tuple[float, M] | None = None
        self.connected = False
        #: The connected link, and whether the sender task waits on it with nothing in
        #: hand (then :meth:`Transport.send` may write to the link itself).
        self.link: Link | None = None
        self.idle = False
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
        self._ssl_context = raft_client_context(ssl_context)
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
        self._sink: trio.MemorySendChannel[M] = self._inbound_send  # see deliver_to
        self._direct: Callable[[M], bool] | None = None  # see deliver_to
        # Accepted inbound connections: their cancel scope -> the client's certificates.
        self._inbound: dict[trio.CancelScope, tuple[bytes, ...]] = {}
        self._idle_closed = 0
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
        if self._sink is not self._inbound_send:
            self._sink.close()
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
        """Use a new client context (e.g. a new cluster certificate) for later dials (its
        ALPN list is set to the Raft protocol)."""
        self._ssl_context = raft_client_context(ssl_context)
        self._server_hostname = server_hostname

    def peers(self) -> dict[int, str]:
        return {node_id: peer.address for node_id, peer in self._peers.items()}

    # -- traffic --

    def send(self, messages: Iterable[M]) -> bool:
        """Send messages to their ``dst`` peers; never blocks, drops when a queue is full.

        The messages to a peer whose sender task is idle on a connected link are written
        here, as one frame (see the module docstring); the others are queued for the
        sender tasks. Returns whether any was queued, i.e. whether a sender task has
        something to do."""
        if self._closed:
            return False
        stamp = 0.0
        direct: dict[int, list[M]] | None = {}
        if self._faults is not None and self._faults.enabled:
            stamp = trio.current_time()
            direct = None  # delays and drops are the sender task's business
        queued = False
        for msg in messages:
            peer = self._peers.get(msg.dst)
            if peer is None:
                self._unroutable += 1
                logger.debug("%s: no raft peer %d, message dropped", self._name, msg.dst)
            elif direct is not None and peer.idle:
                # nothing is queued for an idle peer in this loop: it stays idle
                direct.setdefault(msg.dst, []).append(msg)
            else:
                queued = self._queue(peer, stamp, msg) or queued
        if direct:
            for dst, batch in direct.items():
                peer = self._peers[dst]
                if not self._send_direct(peer, batch):
                    for msg in batch:
                        queued = self._queue(peer, stamp, msg) or queued
        return queued

    @staticmethod
    def _queue(peer: _Peer[M], stamp: float, msg: M | None) -> bool:
        try:
            peer.send_channel.send_nowait((stamp, msg))
        except trio.WouldBlock:
            peer.dropped += 1
            return False
        peer.idle = False  # it has (or will have) this message in hand
        return True

    def _send_direct(self, peer: _Peer[M], batch: list[M]) -> bool:
        """Write messages as one frame on the idle peer's link; False when the link is
        busy or they do not fit in a frame (nothing done: queue them)."""
        link = peer.link
        if link is None or link.lock.locked() or not link.stream.can_send_nowait():
            return False
        payloads = [self._codec.encode(msg) for msg in batch]
        size = FRAME_HEADER.size + sum(FRAME_LENGTH.size + len(p) for p in payloads)
        if size > self.config.max_frame_size:
            return False  # the sender task splits them (and drops what is too big)
        try:
            done = link.stream.send_nowait(encode_record(self.node_id, payloads))
        except trio.BrokenResourceError:
            peer.dropped += len(batch)  # lost with the link: the sender task finds it broken
            self._queue(peer, 0.0, None)
            return True
        if done is None:
            return False
        peer.sent += len(batch)
        peer.frames += 1
        if not done:  # the socket took part of the frame: the sender task writes the rest
            self._queue(peer, 0.0, None)
        return True

    def deliver_to(
        self,
        channel: trio.MemorySendChannel[M] | None,
        direct: Callable[[M], bool] | None = None,
    ) -> None:
        """Put inbound messages straight into ``channel`` (the transport keeps a clone of it
        and closes that clone when it closes), or back into its own queue with None.

        The Raft driver hands its inbox here: a message then reaches the driver task from
        the connection's receive loop in one hop instead of two (no task that only moves
        messages from one queue to the other, which cost a scheduler pass on both ends of
        every round trip). A full channel pushes back on the connection as the own queue
        does; messages already in the own queue stay there.

        ``direct`` (with a channel) is offered each inbound message first, in the receive
        loop; when it returns True it took the message, which does not go to ``channel``.
        It must not block (it runs between two reads of a connection)."""
        if self._sink is not self._inbound_send:
            self._sink.close()
        if channel is None or self._closed:
            self._sink = self._inbound_send
            self._direct = None
        else:
            self._sink = channel.clone()
            self._direct = direct

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
            idle_closed=self._idle_closed,
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
        stream: TLSStream | None = None
        try:
            async with trio.open_nursery() as nursery:
                reader = RecordReader(GOODBYE_MAX_SIZE)
                with trio.fail_after(self.config.connect_timeout):
                    stream = await self._open_tls(host, port)
                    await wait_welcome(stream, reader)
                link = Link(stream, reader)
                peer.connected, peer.failures, peer.link = True, 0, link
                logger.debug("%s: raft link to %d connected", self._name, peer.node_id)
                nursery.start_soon(self._watch, link)
                nursery.start_soon(self._keepalive, link)
                await self._pump(peer, link)
        except BaseException as exc:
            mapped = map_link_error(exc)
            if mapped is None:
                raise
            # Our own errors (from the watcher or keepalive) are raised as they are.
            raise mapped from (None if mapped in leaves(exc) else exc)
        finally:
            peer.connected, peer.link, peer.idle = False, None, False
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _open_tls(self, host: str, port: int) -> TLSStream:
        # open_tcp_stream sets TCP_NODELAY: a frame leaves at once, no Nagle delay.
        tcp = await trio.open_tcp_stream(host, port)
        name = self._server_hostname or host
        stream = TLSStream(tcp, self._ssl_context, server_hostname=name)
        try:
            await stream.do_handshake()
            protocol = stream.selected_alpn_protocol()
            if protocol != RAFT_ALPN:
                raise ProtocolError(
                    f"the peer does not serve the raft channel (ALPN {protocol!r}, "
                    f"not {RAFT_ALPN!r})"
                )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    @staticmethod
    async def _watch(link: Link) -> None:
        # The receiver only ever sends pongs, and a goodbye before it closes: read them,
        # so a close is noticed at once even when there is nothing to send.
        while True:
            data = await link.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise UnavailableError("closed by the peer")
            for record in link.reader.feed(data):
                if record:
                    raise goodbye_error(record)
                link.pong.set()

    async def _keepalive(self, link: Link) -> None:
        while True:
            await trio.sleep(self.config.ping_interval)
            link.pong = trio.Event()
            with trio.move_on_after(self.config.ping_timeout):
                await link.send(KEEPALIVE)
                await link.pong.wait()
                continue
            raise UnavailableError(f"no pong within {self.config.ping_timeout} s")

    async def _pump(self, peer: _Peer[M], link: Link) -> None:
        while True:
            payloads = await self._next_batch(peer)
            if not payloads:  # woken to write what a direct send left (see send)
                await link.send(b"")
                continue
            try:
                await link.send(encode_record(self.node_id, payloads))
            except BaseException:
                peer.dropped += len(payloads)  # lost with the link (or with us)
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
                        stamp, queued = peer.receive_channel.receive_nowait()
                    except trio.WouldBlock:
                        return payloads
                else:
                    peer.idle = True  # empty-handed: send() may use the link meanwhile
                    try:
                        stamp, queued = await peer.receive_channel.receive()
                    finally:
                        peer.idle = False
                if queued is None:  # a flush request: any write flushes the link first
                    if payloads:
                        continue
                    return payloads
                msg = queued
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

    async def serve_stream(self, stream: trio.abc.Stream, extensions: Mapping[str, Any]) -> None:
        """Serve one inbound connection that negotiated :data:`RAFT_ALPN` (the core
        listener's stream handler; ``extensions`` are the connection's, with the client's
        certificates under ``["tls"]["client_cert_chain"]``): refuse it unless a client
        certificate is trusted, then receive frames until it ends or we close."""
        if self._closed:
            await refuse_stream(stream, GOODBYE_GOING_AWAY, "raft transport is closed")
            return
        certificates = client_certificates({"extensions": extensions})
        if not any(self.is_trusted(der) for der in certificates):
            self._refused += 1
            logger.warning(
                "%s: refused raft peer %s: no trusted certificate",
                self._name,
                remote_address(stream),
            )
            await refuse_stream(stream, GOODBYE_FORBIDDEN, "no trusted client certificate")
            return
        try:
            await stream.send_all(KEEPALIVE)  # the welcome: the sender may start
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await self.handle_inbound(stream, certificates)

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
        self, stream: trio.abc.Stream, certificates: Iterable[bytes] = ()
    ) -> None:
        """Receive frames from one accepted (already trusted) connection until it ends or
        we close. ``certificates`` (DER) are those the connection was trusted for, kept
        for :meth:`revalidate_inbound`."""
        if self._closed:
            await refuse_stream(stream, GOODBYE_GOING_AWAY, "raft transport is closed")
            return
        with trio.CancelScope() as scope:
            self._inbound[scope] = tuple(certificates)
            try:
                await self._receive_frames(Inbound(stream))
            except* (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the link broke, or the inbound channel closed under us (shutdown)
            finally:
                del self._inbound[scope]

    async def _receive_frames(self, link: Inbound) -> None:
        async with trio.open_nursery() as nursery:
            delayed = None
            if self._faults is not None:
                # With fault rules possible, frames go through a delivery task that applies
                # the receiver's delays, each from the frame's own arrival: sleeping in the
                # receive loop would hold every later frame too, so delays would add up.
                delayed, frames = trio.open_memory_channel[tuple[float, int, list[M]]](1024)
                nursery.start_soon(self._deliver_with_faults, self._faults, frames, nursery)
            async with trio.open_nursery() as reading:
                reading.start_soon(self._watch_idle, link, reading.cancel_scope)
                if delayed is None:
                    await self._receive_loop(link, None)
                else:
                    async with delayed:
                        await self._receive_loop(link, delayed)
                reading.cancel_scope.cancel()

    async def _watch_idle(self, link: Inbound, reading: trio.CancelScope) -> None:
        # A counter checked once per period costs the receive path nearly nothing; a
        # connection is closed after one to two periods of silence. Silence means waiting
        # for bytes the whole period: a loop held up by a slow driver (back-pressure) is
        # not idle, however long it waits.
        period = self.config.idle_timeout
        while True:
            seen = link.steps
            await trio.sleep(period)
            if link.steps == seen and link.waiting:
                self._idle_closed += 1
                logger.info(
                    "%s: raft connection from %s silent for %.0f s, closed",
                    self._name,
                    remote_address(link.stream),
                    period,
                )
                reading.cancel()
                return

    async def _receive_loop(
        self,
        link: Inbound,
        delayed: trio.MemorySendChannel[tuple[float, int, list[M]]] | None,
    ) -> None:
        stream = link.stream
        reader = RecordReader(self.config.max_frame_size)
        while True:
            link.steps += 1
            link.waiting = True
            data = await stream.receive_some(RECEIVE_SIZE)
            link.waiting = False
            link.steps += 1
            if not data:
                return  # the sender closed its side
            try:
                records = reader.feed(data)
            except ProtocolError as exc:
                await self._refuse(stream, GOODBYE_TOO_BIG, str(exc))
                return
            for record in records:
                if not record:
                    await stream.send_all(KEEPALIVE)  # the pong
                    continue
                try:
                    messages, sender = self._decode(record)
                except _Refusal as refusal:
                    await self._refuse(stream, refusal.code, refusal.reason)
                    return
                if delayed is not None:  # in order, behind frames still being delayed
                    await delayed.send((trio.current_time(), sender, messages))
                else:
                    await self._deliver(messages)

    async def _refuse(self, stream: trio.abc.Stream, code: int, reason: str) -> None:
        self._protocol_errors += 1
        logger.warning(
            "%s: raft connection from %s dropped: %s", self._name, remote_address(stream), reason
        )
        await refuse_stream(stream, code, reason)

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
            direct = self._direct  # (re)read: a send below may wait while the driver stops
            if direct is not None and direct(msg):
                continue
            sink = self._sink
            try:
                sink.send_nowait(msg)
            except trio.WouldBlock:
                await sink.send(msg)
            except trio.ClosedResourceError:
                if sink is self._sink:
                    raise
                # redirected (deliver_to) while we were at it: deliver where it goes now
                await self._sink.send(msg)

    def _decode(self, data: bytes) -> tuple[list[M], int]:
        try:
            frame = decode_frame(data, max_size=self.config.max_frame_size)
        except ProtocolError as exc:
            raise _Refusal(GOODBYE_PROTOCOL_ERROR, f"malformed frame: {exc}") from exc
        try:
            messages = [self._codec.decode(payload) for payload in frame.payloads]
        except self._codec.errors as exc:
            raise _Refusal(GOODBYE_PROTOCOL_ERROR, f"undecodable message: {exc}") from exc
        for msg in messages:
            if msg.dst != self.node_id or msg.src != frame.sender:
                raise _Refusal(
                    GOODBYE_PROTOCOL_ERROR,
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
