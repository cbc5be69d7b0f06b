"""A small, strict HTTP/1.1 server loop for fast endpoints, in front of hypercorn.

Theory of operation
-------------------
hypercorn + h11 + an ASGI wrapper cost about 0.4 ms of CPU per request on our machines,
most of it in layers a small request does not need. The listener therefore reads request
heads itself (after the TLS handshake, and on unix sockets) when its app offers a
:class:`DirectApp` (the fast-endpoint dispatcher of ``_fast``):

1. :func:`parse_head` parses one complete head strictly. It accepts only what it fully
   understands: a request line ``METHOD SP /target SP HTTP/1.1|HTTP/1.0`` with a method of
   :data:`DIRECT_METHODS` and a printable-ASCII origin-form target; header lines
   ``token ":" OWS value OWS`` with CRLF line ends; at most one ``Content-Length`` (digits);
   exactly one ``Host`` on HTTP/1.1; no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``
   and no ``Connection: upgrade``. Anything else returns None.
2. :class:`_Connection` loops over requests on one connection. A head that parses and
   whose ``(method, path)`` the :class:`DirectApp` claims is answered here: the in-flight
   cap (503 envelope), then the app (which runs the same gates as every other path), then
   the response head and body in ONE write; a body the handler did not read is drained
   (bounded by ``Limits.body_timeout``) so the connection stays usable; keep-alive and
   pipelining follow, ``Connection: close`` and HTTP/1.0 close after the answer (with
   ``Connection: close``, as h11 writes it).
3. Anything else (a route that is not fast, a head :func:`parse_head` refuses, a bare-LF
   head, a websocket upgrade, ``Expect: 100-continue``, a chunked body) hands the WHOLE
   rest of the connection to the fallback (hypercorn), replaying the bytes already read.
   hypercorn then answers exactly as if it had read them itself (including its 400 for a
   malformed head), so the core API, websockets and every Quart route behave as before;
   a client that only calls fast routes never reaches h11.

Limits match hypercorn's: a head must be complete within ``Limits.header_timeout`` of the
connection's start or of the previous answer (else the connection is closed, as
hypercorn's keep-alive timer does); a head larger than ``Limits.max_header_size`` gets
hypercorn's 431 and the connection is closed; ``Limits.read_timeout`` bounds every read.
When the listener shuts down (:meth:`DirectConnections.terminate`), connections waiting
for a head close at once, and the others close after their current answer.

Responses are written as h11 writes them (``HTTP/1.1 <status> `` with an empty reason,
lower-case header names from the app, then ``date``), so a client cannot tell the two
paths apart. The scope a fast handler sees has hypercorn's keys (``client`` and
``server`` are None on a unix socket) except the lifespan ``state``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final, runtime_checkable
from urllib.parse import unquote
from wsgiref.handlers import format_date_time

import trio

from ._envelope import error_response
from ._limits import Limits

__all__ = [
    "DIRECT_METHODS",
    "DirectApp",
    "DirectConnections",
    "HTTPDate",
    "ListenerFacts",
    "RequestHead",
    "ResponseParts",
    "encode_response",
    "in_flight_refusal",
    "parse_head",
    "serve_http1",
]

logger = logging.getLogger("microtrio.api")

#: Methods a head may have to be answered here (HEAD and OPTIONS go to hypercorn).
DIRECT_METHODS: Final = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})

#: Bytes asked of the stream per read (what hypercorn asks).
RECEIVE_SIZE: Final = 65536

ResponseParts = tuple[int, Sequence[tuple[bytes, bytes]], bytes]
"""A response as ``(status, [(lower-case name, value)], body)``."""


@runtime_checkable
class DirectApp(Protocol):
    """What the listener needs from an app to answer some requests without hypercorn."""

    def match_direct(self, method: str, path: str) -> object | None:
        """A route handle when this app answers ``method path`` directly, else None."""

    async def respond_direct(
        self,
        route: object,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        content_length: int | None,
    ) -> ResponseParts:
        """Answer one request; ``scope`` is an ASGI HTTP scope, ``receive`` gives its body
        as ASGI ``http.request`` messages (or ``http.disconnect``); ``content_length`` is
        the parsed header (None without one)."""


# -- parsing (no I/O) ------------------------------------------------------------------------

_TARGET = re.compile(rb"/[\x21-\x7e]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A field value: visible ASCII, obs-text, spaces and tabs inside (h11 accepts the same).
_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
#: Response header lines ``name: value`` (as :data:`_TOKEN` and :data:`_VALUE`), each ending
#: in CRLF.
_HEADER_BLOCK = re.compile(rb"(?:%s: (?:%s)?\r\n)*" % (_TOKEN.pattern, _VALUE.pattern))
_HAND_OFF_FIELDS: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


@final
@dataclass(frozen=True, slots=True)
class RequestHead:
    """One parsed request head."""

    method: str
    #: The path, percent-decoded as hypercorn decodes it.
    path: str
    raw_path: bytes
    query_string: bytes
    #: ``"1.1"`` or ``"1.0"``.
    http_version: str
    #: ``(lower-case name, value)`` in order.
    headers: list[tuple[bytes, bytes]]
    #: None without a ``Content-Length`` (no body).
    content_length: int | None
    #: False for HTTP/1.0 and for ``Connection: close``.
    keep_alive: bool


def parse_head(head: bytes) -> RequestHead | None:
    """Parse one request head (everything before the blank line, without it), or None when
    it is anything but a plain request this module serves (see the module docstring)."""
    lines = head.split(b"\r\n")
    crlf = len(lines) - 1
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None  # a bare CR or LF: not ours to interpret
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method_b, target, version = parts
    if version == b"HTTP/1.1":
        http_version = "1.1"
    elif version == b"HTTP/1.0":
        http_version = "1.0"
    else:
        return None
    method = method_b.decode("latin-1")
    if method not in DIRECT_METHODS or _TARGET.fullmatch(target) is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    hosts = 0
    keep_alive = http_version == "1.1"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None
        value = value.strip(b" \t")
        if value and _VALUE.fullmatch(value) is None:
            return None
        name = name.lower()
        if name in _HAND_OFF_FIELDS:
            return None
        if name == b"content-length":
            if length is not None or _DIGITS.fullmatch(value) is None:
                return None
            length = value
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            if b"close" in tokens:
                keep_alive = False
        headers.append((name, value))
    if http_version == "1.1" and hosts != 1:
        return None
    raw_path, _, query = target.partition(b"?")
    return RequestHead(
        method,
        unquote(raw_path.decode("ascii")),
        raw_path,
        query,
        http_version,
        headers,
        int(length) if length is not None else None,
        keep_alive,
    )


@final
class HTTPDate:
    """The ``date`` header value, formatted once per second of ``clock`` (wall time)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._value = format_date_time(second).encode("ascii")
        return self._value


def _valid_block(block: bytes, count: int) -> bool:
    """``count`` header lines, each one ``token: value``: no CR or LF inside a header (a
    value must not smuggle in a line of its own)."""
    return block.count(b"\n") == count == block.count(b"\r") and (
        _HEADER_BLOCK.fullmatch(block) is not None
    )


def encode_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    date: bytes,
    *,
    close: bool,
) -> bytes | None:
    """Head and body as h11 writes them for hypercorn (``date`` after the app's headers),
    or None when the status or a header is not valid HTTP (names are tokens, values have
    no control characters; surrounding blanks are stripped, as hypercorn strips them)."""
    block = b"".join([b"%s: %s\r\n" % pair for pair in headers])
    if not _valid_block(block, len(headers)):
        stripped = [(name.strip(), value.strip()) for name, value in headers]
        block = b"".join([b"%s: %s\r\n" % pair for pair in stripped])
        if not _valid_block(block, len(headers)):
            return None
    if not 200 <= status <= 999:
        return None
    closing = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d \r\n%sdate: %s\r\n%s\r\n%s" % (status, block, date, closing, body)


def _envelope_parts(status: int, message: str, *, retry: bool = False) -> ResponseParts:
    envelope = error_response(status, message)
    headers = [(k.lower().encode(), v.encode()) for k, v in envelope.headers]
    headers.append((b"content-length", b"%d" % len(envelope.body)))
    if retry:
        headers.append((b"retry-after", b"1"))
    return status, headers, envelope.body


def in_flight_refusal() -> ResponseParts:
    """The answer to a request over the listener's in-flight cap (both paths send it)."""
    return _envelope_parts(503, "Too many requests in flight; retry later", retry=True)


# -- the connection loop -----------------------------------------------------------------


@final
class DirectConnections:
    """The direct-path connections of one listener, for shutdown: :meth:`terminate` closes
    every connection waiting for a request head at once; the others close after their
    current answer."""

    def __init__(self) -> None:
        self.terminated = False
        self._open: set[_Connection] = set()

    def terminate(self) -> None:
        self.terminated = True
        for connection in self._open:
            connection.close_if_waiting()


class _Closed(Exception):
    """The connection is over (peer gone, timeout, or a close we decided)."""


@final
@dataclass(slots=True)
class ListenerFacts:
    """What one listener tells every connection it hands to :func:`serve_http1`."""

    app: DirectApp
    limits: Limits
    load: Any  # _listener.ListenerLoad (not imported: it imports this module)
    bound: str
    connections: DirectConnections
    date: HTTPDate


async def serve_http1(
    stream: trio.abc.Stream,
    facts: ListenerFacts,
    extensions: dict[str, Any],
    hand_off: Callable[[bytes], Awaitable[None]],
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until it closes; requests the app does not
    answer directly go, with the rest of the connection, to ``hand_off(buffered)``. The
    caller closes ``stream`` afterwards."""
    connection = _Connection(stream, facts, extensions)
    buffered = await connection.run()
    if buffered is not None:
        await hand_off(buffered)


def _addresses(stream: trio.abc.Stream) -> tuple[Any, Any]:
    """The scope's ``client`` and ``server``, as hypercorn gives them (None on a unix
    socket)."""
    transport = getattr(stream, "transport_stream", stream)
    sock = getattr(transport, "socket", None)
    if sock is None or sock.family not in (trio.socket.AF_INET, trio.socket.AF_INET6):
        return None, None
    try:
        peer, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return None, None
    return (peer[0], peer[1]), (local[0], local[1])


@final
class _Connection:
    """One connection's request loop (see the module docstring)."""

    def __init__(
        self, stream: trio.abc.Stream, facts: ListenerFacts, extensions: dict[str, Any]
    ) -> None:
        self._stream = stream
        self._facts = facts
        self._limits = facts.limits
        self._extensions = extensions
        self._scheme = "https" if "tls" in extensions else "http"
        self._client, self._server = _addresses(stream)
        self._buffer = bytearray()
        #: Bytes of the current request's body not yet taken out of the stream/buffer.
        self._body_left = 0
        #: When the current request's body must have arrived (``Limits.body_timeout``).
        self._body_deadline = 0.0
        #: Cancelled when a head is too slow, or the listener terminates while we wait.
        self._scope = trio.CancelScope()
        self._waiting = False

    async def run(self) -> bytes | None:
        """Answer requests until the connection ends (None), or return the buffered bytes
        to hand off."""
        connections = self._facts.connections
        connections._open.add(self)
        try:
            with self._scope:
                return await self._loop()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            connections._open.discard(self)
        return None  # our scope was cancelled: a head too slow, or the listener terminated

    def close_if_waiting(self) -> None:
        if self._waiting:
            self._scope.cancel()

    async def _loop(self) -> bytes:
        app = self._facts.app
        while True:
            end = await self._wait_head()
            head = parse_head(bytes(self._buffer[:end]))
            if head is None:
                return bytes(self._buffer)
            route = app.match_direct(head.method, head.path)
            if route is None:
                return bytes(self._buffer)
            del self._buffer[: end + 4]
            self._body_left = head.content_length or 0
            if self._body_left:
                self._body_deadline = trio.current_time() + self._limits.body_timeout
            parts = await self._answer(head, route)
            close = not head.keep_alive or self._facts.connections.terminated
            await self._send(parts, close=close)
            if close:
                raise _Closed()
            await self._drain()

    # -- reading -------------------------------------------------------------------------

    async def _receive(self) -> bytes:
        try:
            if self._limits.read_timeout is None:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            else:
                with trio.fail_after(self._limits.read_timeout):
                    data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            raise _Closed() from exc
        if not data:
            raise _Closed()
        return bytes(data)

    async def _wait_head(self) -> int:
        """The offset of the blank line ending the next head in the buffer; waits for it
        under ``header_timeout`` (the connection's scope is cancelled when it expires or
        the listener terminates); a head over ``max_header_size`` is answered 431. Returns
        the whole buffer's length (a hand-off) when the head has a bare line feed."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if self._facts.connections.terminated:
                raise _Closed()
            # One cancel scope per connection, its deadline moved (cheaper than a scope per
            # request): armed while waiting for a head, disarmed while answering.
            self._scope.deadline = trio.current_time() + self._limits.header_timeout
            self._waiting = True
            try:
                while end < 0 and len(buffer) <= self._limits.max_header_size:
                    if buffer.count(b"\n") != buffer.count(b"\r\n"):
                        return len(buffer)  # bare LF line ends: hypercorn's call
                    start = max(0, len(buffer) - 3)
                    buffer += await self._receive()
                    end = buffer.find(b"\r\n\r\n", start)
            finally:
                self._waiting = False
                self._scope.deadline = math.inf
            if self._scope.cancel_called:  # expired after the last read, before disarming
                raise _Closed()
        if end < 0 or end + 4 > self._limits.max_header_size:
            await self._refuse(431)
        return end

    async def _receive_body(self) -> dict[str, Any]:
        """The next piece of the current body, as an ASGI message."""
        left = self._body_left
        if left and not self._buffer:
            try:
                self._buffer += await self._receive()
            except _Closed:
                return {"type": "http.disconnect"}
        take = min(left, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        self._body_left = left - take
        return {"type": "http.request", "body": data, "more_body": self._body_left > 0}

    async def _drain(self) -> None:
        """Discard what the handler left unread of the body (it must still arrive within
        ``body_timeout`` of the head), so the connection can take the next request."""
        if not self._body_left:
            return
        with trio.move_on_at(self._body_deadline):
            while self._body_left:
                message = await self._receive_body()
                if message["type"] == "http.disconnect":
                    raise _Closed()
            return
        raise _Closed()

    # -- answering -----------------------------------------------------------------------

    async def _answer(self, head: RequestHead, route: object) -> ResponseParts:
        load = self._facts.load
        if load.refuse_request(self._limits, self._facts.bound, head.method, head.path):
            return in_flight_refusal()
        scope = {
            "type": "http",
            "http_version": head.http_version,
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": head.method,
            "scheme": self._scheme,
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query_string,
            "root_path": "",
            "headers": head.headers,
            "client": self._client,
            "server": self._server,
            "extensions": dict(self._extensions),
        }
        load.in_flight += 1
        try:
            status, headers, body = await self._facts.app.respond_direct(
                route, scope, self._receive_body, head.content_length
            )
        except Exception as exc:  # a bug below the gates: hypercorn would answer 500 too
            logger.error(
                "%s: %s %s failed", self._facts.bound, head.method, head.path, exc_info=exc
            )
            return _envelope_parts(500, "")
        finally:
            load.in_flight -= 1
        return status, headers, body

    async def _send(self, parts: ResponseParts, *, close: bool) -> None:
        status, headers, body = parts
        data = encode_response(status, headers, body, self._facts.date.value(), close=close)
        if data is None:
            logger.error("%s: invalid response status or header: %d %r", self._facts.bound,
                         status, headers)  # fmt: skip
            status, headers, body = _envelope_parts(500, "")
            data = encode_response(status, headers, body, self._facts.date.value(), close=close)
            assert data is not None
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closed() from exc

    async def _refuse(self, status: int) -> None:
        """hypercorn's answer to a head it cannot take (empty body), then close."""
        headers = [(b"content-length", b"0"), (b"connection", b"close")]
        data = encode_response(status, headers, b"", self._facts.date.value(), close=False)
        assert data is not None
        try:
            with trio.move_on_after(self._limits.header_timeout):
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        raise _Closed()
