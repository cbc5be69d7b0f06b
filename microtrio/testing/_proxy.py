"""TCP proxies per directed link: partitions, delay and loss without root.

Theory of operation
-------------------

The Raft transport's fault layer (``microtrio._replication._faults.Faults``) is an in-process
object: it serves tests that run members in one ``trio.run``, but nothing exposes it to another
process. For members running as separate processes without root (so without
:mod:`._netns`), faults come from here: one :class:`LinkProxy` per *directed* link
``src -> dst``, listening on its own loopback port and forwarding each connection to
``dst``'s real address. A member ``src`` must then be told to reach ``dst`` at
``mesh.address(src, dst)`` instead of ``dst``'s own address (this needs a per-member peer
address override in the daemon; see docs/testing.md). TLS passes through untouched: the proxy
only moves bytes.

Our transport opens one connection per ordered pair (``src`` dials ``dst`` to send), so a
directed link's proxy carries exactly ``src``'s traffic to ``dst`` and the replies on that
connection. Controls, at runtime, per link:

* ``blocked``: a partition. Nothing moves in either direction of the link's connections, and
  no new connection reaches ``dst`` (the proxy still accepts it, as a half-dead network
  would, and holds it). Bytes already read are held, not lost; TCP would also deliver them
  after the partition heals, if the connection survived.
* ``delay``: seconds added to every chunk of bytes, in order (a chunk leaves ``delay`` after
  it arrived; later chunks never overtake it).
* ``drop``: the probability, per chunk, that the connection is cut (both sides closed). On a
  TCP stream a lost message cannot just vanish; a cut connection loses what was in flight,
  which is what message loss means to Raft, and the transport redials.

Each direction of a proxied connection is a reader task that pushes ``(release time, bytes)``
into a small bounded channel and a writer task that waits for the release time: a slow
receiver slows the sender (back-pressure), as TCP would. Randomness is a seeded
``random.Random``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import trio

from .._errors import ValidationError

__all__ = ["LinkProxy", "LinkStatistics", "ProxyMesh", "open_proxy_mesh"]

logger = logging.getLogger("microtrio.testing.proxy")

Link = tuple[str, str]

_CHUNK: Final = 65536
_BUFFERED_CHUNKS: Final = 16


class _Cut(Exception):
    """The link decided to drop this connection."""


@final
@dataclass(frozen=True, slots=True)
class LinkStatistics:
    connections: int
    open_connections: int
    bytes_forwarded: int
    cuts: int


@final
class LinkProxy:
    """Forwards connections accepted on ``127.0.0.1:<port>`` to ``target``; see the module."""

    def __init__(self, src: str, dst: str, target: tuple[str, int], rng: random.Random) -> None:
        self.src = src
        self.dst = dst
        self.target = target
        self.port = 0  # set once serving
        self._rng = rng
        self._blocked = False
        self._open = trio.Event()
        self._open.set()
        self.delay = 0.0
        self.drop = 0.0
        self._connections = self._live = self._bytes = self._cuts = 0

    # -- controls ------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        return self._blocked

    def set(self, *, blocked: bool | None = None, delay: float | None = None,
            drop: float | None = None) -> None:  # fmt: skip
        """Change the link's faults; ``None`` keeps a value. Takes effect on the next chunk."""
        if delay is not None and delay < 0:
            raise ValidationError(f"delay must not be negative, got {delay!r}")
        if drop is not None and not 0.0 <= drop <= 1.0:
            raise ValidationError(f"drop must be within [0, 1], got {drop!r}")
        self.delay = self.delay if delay is None else delay
        self.drop = self.drop if drop is None else drop
        if blocked is not None and blocked != self._blocked:
            self._blocked = blocked
            if blocked:
                self._open = trio.Event()
            else:
                self._open.set()

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(self._connections, self._live, self._bytes, self._cuts)

    async def _wait_open(self) -> None:
        while self._blocked:
            await self._open.wait()

    # -- serving -------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward connections until cancelled; ``started()`` gives the port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self._connections += 1
        self._live += 1
        try:
            async with client:
                await self._wait_open()
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                except OSError as exc:
                    logger.info("proxy %s->%s: target unreachable: %s", self.src, self.dst, exc)
                    return
                async with upstream:
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._direction, client, upstream)
                            nursery.start_soon(self._direction, upstream, client)
                    except* _Cut:
                        self._cuts += 1
                    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass  # one side went away: the connection is over, as for TCP
        finally:
            self._live -= 1

    async def _direction(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_BUFFERED_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, receive, sink)
            async with send:
                while True:
                    await self._wait_open()
                    data = await source.receive_some(_CHUNK)
                    if not data:
                        break
                    if self.drop and self._rng.random() < self.drop:
                        raise _Cut
                    await send.send((trio.current_time() + self.delay, data))

    async def _write(
        self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], sink: trio.SocketStream
    ) -> None:
        async with receive:
            async for release, data in receive:
                await trio.sleep_until(release)
                await self._wait_open()
                await sink.send_all(data)
                self._bytes += len(data)
        await sink.send_eof()


@final
class ProxyMesh:
    """One :class:`LinkProxy` per ordered pair of members; made by :func:`open_proxy_mesh`."""

    def __init__(self, links: Mapping[Link, LinkProxy]) -> None:
        self._links = dict(links)

    def link(self, src: str, dst: str) -> LinkProxy:
        try:
            return self._links[(src, dst)]
        except KeyError:
            raise ValidationError(f"no link {src} -> {dst}") from None

    def address(self, src: str, dst: str) -> tuple[str, int]:
        """Where ``src`` must connect to reach ``dst`` through the link's proxy."""
        return ("127.0.0.1", self.link(src, dst).port)

    async def partition(self, blocked: frozenset[Link]) -> None:
        """Block exactly these directed links; unblock the others."""
        for link in blocked:
            self.link(*link)  # validates every name before changing anything
        for key, proxy in self._links.items():
            proxy.set(blocked=key in blocked)

    async def heal(self) -> None:
        await self.partition(frozenset())

    def set_link(self, src: str, dst: str, *, delay: float | None = None,
                 drop: float | None = None) -> None:  # fmt: skip
        self.link(src, dst).set(delay=delay, drop=drop)

    def statistics(self) -> dict[Link, LinkStatistics]:
        return {k: p.statistics() for k, p in self._links.items()}


@asynccontextmanager
async def open_proxy_mesh(
    targets: Mapping[str, tuple[str, int]], *, seed: int = 0
) -> AsyncIterator[ProxyMesh]:
    """Proxies for every ordered pair of ``targets`` (member name -> its real address).

    The proxies run in a nursery owned by the context manager and stop when it exits.
    """
    if len(targets) < 2:
        raise ValidationError("a proxy mesh needs two or more members")
    rng = random.Random(seed)
    links = {
        (src, dst): LinkProxy(src, dst, addr, random.Random(rng.getrandbits(64)))
        for src in targets
        for dst, addr in targets.items()
        if src != dst
    }
    async with trio.open_nursery() as nursery:
        for proxy in links.values():
            await nursery.start(proxy.serve)
        try:
            yield ProxyMesh(links)
        finally:
            nursery.cancel_scope.cancel()
