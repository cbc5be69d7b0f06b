"""Serving ASGI apps on hypercorn + trio, with the client-certificate seam.

Theory of operation
-------------------
hypercorn 0.18 builds the ASGI scope inside its protocol classes and has no ASGI ``tls``
extension, so a handler cannot see the client certificate. We keep hypercorn's HTTP/1.1
and websocket protocol code but own the accept loop (a slimmed ``hypercorn.trio.run.
worker_serve``): for every accepted TCP connection we

1. wrap the raw stream in our :class:`~microtrio._tls.TLSStream` with the context read *now* from the
   :class:`~microtrio._certs.SSLContextHolder` (so a swapped certificate applies to the
   next connection: live reload, reference 7.9),
2. complete the TLS handshake ourselves (under ``ssl_handshake_timeout``) and read the
   peer certificate,
3. when the app offers fast endpoints (a :class:`~microtrio._api._http1.DirectApp` as
   its ``asgi_app``, see ``_fast``), read request heads ourselves
   (:func:`~microtrio._api._http1.serve_http1`) and answer the fast ones on the spot;
   the first request that is anything else hands the connection, with the bytes read so
   far, to step 4 (unix-socket connections alike);
4. hand the stream to hypercorn's ``TCPServer`` with an app wrapper made for THIS
   connection, which copies the connection's facts into every request's scope
   (HTTP and websocket alike).

Scope contract (what handlers read):

* ``scope["extensions"]["microtrio"]["listener"]`` is ``"tls"`` or ``"unix"``; it is
  always set by our listeners and absent elsewhere.
* TLS connections: ``scope["extensions"]["tls"]`` follows the ASGI TLS extension:
  ``client_cert_chain`` is a list of **PEM strings** (the leaf only: Python 3.11 cannot
  read the rest of the chain; empty when the client sent no certificate),
  ``server_cert`` (PEM), ``client_cert_name``/``client_cert_error`` (None),
  ``tls_version`` (0x0304), ``cipher_suite`` (None).
* Unix-socket connections: no ``tls`` extension.

:func:`is_trusted_scope` is the trust decision of reference 2.2 built on this contract;
it refuses whenever it cannot positively see a listener type and, for TLS, a certificate.
A TLS connection's scope also carries a private memo of its truststore lookup (the
certificate is parsed once per connection and truststore generation, not per request).

Limits (:class:`~microtrio._api._limits.Limits`, issue 8): the accept loop closes a
connection over ``max_connections`` at once (before TLS); the connection wrapper answers an
HTTP request over ``max_in_flight`` with a 503 envelope without calling the app; hypercorn's
timers cut slow request heads (``header_timeout``) and TLS handshakes. The direct HTTP/1.1
path applies the same limits itself (see ``_http1``). A
:class:`ListenerLoad` passed in counts all of it (``statistics()``).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import math
import os
import socket as stdlib_socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, final

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from .._certs import SSLContextHolder, cert_pem, load_certificate
from .._cluster._names import DEFAULT_PORT, format_address, parse_address
from .._cluster._truststore import TrustedMember, Truststore
from .._errors import UnavailableError
from .._tls import TLSStream
from ._http1 import (
    DirectApp,
    DirectConnections,
    HTTPDate,
    ListenerFacts,
    in_flight_refusal,
    serve_http1,
)
from ._limits import DEFAULT_LIMITS, Limits

__all__ = [
    "ASGIApp",
    "ListenerLoad",
    "ListenerStatistics",
    "StreamHandler",
    "TLS_VERSION_1_3",
    "client_certificates",
    "is_trusted_scope",
    "listener_kind",
    "serve_tcp",
    "serve_unix",
    "trusted_member_for_scope",
]

logger = logging.getLogger("microtrio.api")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI 3 application ``app(scope, receive, send)``."""
ShutdownTrigger = Callable[[], Awaitable[object]]
StreamHandler = Callable[[TLSStream, dict[str, Any]], Awaitable[None]]
"""Serves a whole TLS connection whose client chose this handler's ALPN protocol: gets the
handshaken stream and the connection's scope extensions (``tls``: the client's
certificates); the listener closes the stream when it returns."""

TLS_VERSION_1_3 = 0x0304
_EXT = "microtrio"


# -- scope helpers (the consumer side of the seam) ---------------------------------------


def listener_kind(scope: Scope) -> str | None:
    """``"tls"``, ``"unix"`` or None when the request did not come through our listeners."""
    ext = (scope.get("extensions") or {}).get(_EXT)
    kind = ext.get("listener") if isinstance(ext, dict) else None
    return kind if kind in ("tls", "unix") else None


def client_certificates(scope: Scope) -> list[str] | None:
    """The client's certificates (PEM) of a TLS request; None when the scope has no tls
    extension (unix socket, or a server that does not provide it); [] if none was sent."""
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, dict):
        return None
    chain = tls.get("client_cert_chain")
    return [c for c in chain if isinstance(c, str)] if isinstance(chain, list) else None


def trusted_member_for_scope(
    scope: Scope, truststore: Truststore, *, now: datetime | None = None
) -> TrustedMember | None:
    """The truststore member a TLS request authenticated as, or None."""
    if listener_kind(scope) != "tls":
        return None
    chain = client_certificates(scope)
    memo = scope["extensions"][_EXT].get("trust")
    if isinstance(memo, _TrustMemo) and chain:
        return memo.trusted_member(truststore, chain, now)
    return truststore.trusted_member(chain, now=now)


@final
class _TrustMemo:
    """One connection's truststore lookup, kept until the truststore or the chain changes.

    ``Truststore.trusted_member`` parses the client's certificate and the member's on every
    call; a connection's certificate never changes, so the lookup (which members match, and
    their validity periods) is done once per truststore generation, and only the validity
    check against ``now`` runs per request. Same answer as ``trusted_member``: the first
    certificate of the chain whose member is valid at ``now``.
    """

    __slots__ = ("_chain", "_generation", "_matches", "_store")

    def __init__(self) -> None:
        self._store: Truststore | None = None
        self._generation = -1
        self._chain: list[str] = []
        #: each matching member with its certificate's validity period (read once: the
        #: certificate's ``not_valid_*`` properties build new datetimes on every access)
        self._matches: list[tuple[TrustedMember, datetime, datetime]] = []

    def trusted_member(
        self, truststore: Truststore, chain: list[str], now: datetime | None
    ) -> TrustedMember | None:
        generation = truststore.generation  # before the lookup (see Truststore.generation)
        if self._store is not truststore or self._generation != generation or self._chain != chain:
            matches = []
            for cert in chain:
                member = truststore.by_certificate(cert)
                if member is not None:
                    parsed = load_certificate(member.certificate)
                    matches.append(
                        (member, parsed.not_valid_before_utc, parsed.not_valid_after_utc)
                    )
            self._store, self._generation, self._chain = truststore, generation, chain
            self._matches = matches
        moment = now if now is not None else datetime.now(UTC)
        for member, not_before, not_after in self._matches:
            if not_before <= moment <= not_after:  # as is_within_validity
                return member
        return None


def is_trusted_scope(
    scope: Scope,
    truststore: Truststore,
    *,
    expected_host: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Reference 2.2: unix requests are trusted; TLS requests only when (if given) the
    ``Host`` header equals ``expected_host`` and a client certificate is byte-identical to
    a valid truststore certificate. Anything else (including a scope without our
    extension, or a TLS scope without a visible certificate) is untrusted."""
    kind = listener_kind(scope)
    if kind == "unix":
        return True
    if kind != "tls":
        return False
    if expected_host is not None:
        hosts = [v for k, v in scope.get("headers") or [] if k.lower() == b"host"]
        if hosts != [expected_host.encode()]:
            return False
    return trusted_member_for_scope(scope, truststore, now=now) is not None


# -- load accounting ---------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """A listener's load: open connections, HTTP requests being answered, and how many
    connections / requests were refused by the limits since it started."""

    connections: int
    in_flight: int
    refused_connections: int
    refused_requests: int


_WARNING_INTERVAL = 5.0


@final
class ListenerLoad:
    """The mutable counters of one listener (pass one to ``serve_tcp``/``serve_unix``)."""

    def __init__(self) -> None:
        self.connections = 0
        self.in_flight = 0
        self.refused_connections = 0
        self.refused_requests = 0
        self._last_warning = -_WARNING_INTERVAL

    def should_warn(self) -> bool:
        """At most one refusal warning per listener every few seconds (a flood of refusals
        must not become a flood of log lines)."""
        now = trio.current_time()
        if now - self._last_warning < _WARNING_INTERVAL:
            return False
        self._last_warning = now
        return True

    def refuse_request(self, limits: Limits, bound: str, method: object, path: object) -> bool:
        """True when a request must be refused (``limits.max_in_flight`` requests are being
        answered already): counted, and logged now and then (``bound``, ``method`` and
        ``path`` name it in the warning)."""
        if self.in_flight < limits.max_in_flight:
            return False
        self.refused_requests += 1
        if self.should_warn():
            logger.warning(
                "%s: refusing requests: %d in flight (%d refused so far), e.g. %s %s",
                bound,
                self.in_flight,
                self.refused_requests,
                method,
                path,
            )
        return True

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(
            self.connections, self.in_flight, self.refused_connections, self.refused_requests
        )


# -- the app wrapper ---------------------------------------------------------------------


class _ConnectionApp:
    """Adds one connection's facts to every scope, and enforces the in-flight cap, before
    calling the real app."""

    def __init__(
        self,
        app: ASGIApp,
        extensions: dict[str, Any],
        load: ListenerLoad,
        limits: Limits,
        bound: str,
    ) -> None:
        self._app = app
        self._bound = bound
        self._extensions = extensions
        self._load = load
        self._limits = limits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind in ("http", "websocket"):
            scope = dict(scope)
            extensions = dict(scope.get("extensions") or {})
            extensions.update(self._extensions)
            scope["extensions"] = extensions
        if kind != "http":
            await self._app(scope, receive, send)
            return
        load = self._load
        if load.refuse_request(self._limits, self._bound, scope.get("method"), scope.get("path")):
            status, headers, body = in_flight_refusal()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        load.in_flight += 1
        try:
            await self._app(scope, receive, send)
        finally:
            load.in_flight -= 1


def _tls_extensions(stream: TLSStream, server_pem: str) -> dict[str, Any]:
    der = stream.getpeercert(binary_form=True)
    chain = [cert_pem(der)] if der else []
    return {
        _EXT: {"listener": "tls", "trust": _TrustMemo()},
        "tls": {
            "server_cert": server_pem,
            "client_cert_chain": chain,
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": TLS_VERSION_1_3,
            "cipher_suite": None,
        },
    }


def _make_config(graceful_timeout: float, limits: Limits) -> Config:
    config = Config()
    config.graceful_timeout = graceful_timeout
    config.ssl_handshake_timeout = limits.handshake_timeout
    config.keep_alive_timeout = limits.header_timeout
    config.h11_max_incomplete_size = limits.max_header_size
    config.read_timeout = limits.read_timeout  # type: ignore[assignment]
    config.websocket_max_message_size = limits.max_raft_frame_size
    # Hand hypercorn our own logger: its default ("-") would install a stderr handler,
    # and only the CLI configures logging.
    config.accesslog = None
    # No "server: hypercorn-h11" header: it tells callers nothing they need, and the direct
    # HTTP/1.1 path (which is not hypercorn) writes the same responses.
    config.include_server_header = False
    config.errorlog = logging.getLogger("microtrio.api.hypercorn")
    return config


# -- response coalescing ------------------------------------------------------------------


def _is_final_response_head(data: bytes | bytearray | memoryview) -> bool:
    """An HTTP/1.x response head with a final (2xx-5xx) status, as h11 writes it."""
    start = bytes(data[:10])
    return start[:7] == b"HTTP/1." and start[9:10] in (b"2", b"3", b"4", b"5")


class _CoalescingStream:
    """What hypercorn's connection writes to: sends a response's head and the first piece
    of its body as ONE write (one TLS record, one system call) instead of two, and drops
    empty writes. ``replay`` (bytes the direct HTTP/1.1 path read before handing the
    connection over) is what the first ``receive_some`` returns.

    hypercorn writes a response as three ``send_all`` calls from one task: the head (h11
    ``Response``, sent only once the app sends its first body message), the body (``Data``)
    and the end (``EndOfMessage``: empty with a Content-Length). A final response head is
    held here until the next write, which always follows; an interim response
    (``100 Continue``) goes out at once. Anything else is delegated to the wrapped stream
    (``do_handshake``, ``transport_stream``, ``socket``...), so hypercorn sees the stream
    it expects; an attribute the stream lacks is still missing (hypercorn probes for them).
    """

    def __init__(self, stream: trio.abc.Stream, replay: bytes = b"") -> None:
        self._stream = stream
        self._held = b""
        self._replay = replay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held and _is_final_response_head(data):
            self._held = bytes(data)
            return
        if self._held:
            data, self._held = self._held + bytes(data), b""
        if data:
            await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._replay:  # what the direct HTTP/1.1 path read before handing over
            await trio.lowlevel.checkpoint()
            data, self._replay = self._replay, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def _flush(self) -> None:
        if self._held:
            data, self._held = self._held, b""
            await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._flush()
        await self._stream.send_eof()  # type: ignore[attr-defined]  # AttributeError: TLS

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self._stream.aclose()


# -- the keep-alive timer ------------------------------------------------------------------


class _IdleTimer:
    """The keep-alive timer of one connection, in place of hypercorn's ``TCPServer.idle_task``.

    hypercorn starts a new task (``nursery.start``, under a lock) every time a connection
    turns idle and cancels it when the next request arrives: two task switches and a
    cancel scope per request. This keeps ONE task per connection and moves its deadline
    instead: ``restart`` (idle) sets it to now + ``keep_alive_timeout`` (now if the server
    is terminating), ``stop`` (busy) to infinity; moving a deadline wakes nobody. When it
    expires, or when the server terminates while the connection is idle, the connection is
    closed as hypercorn's ``_idle_timeout`` closes it. :class:`_TCPServer` ends the task
    when the connection's read loop ends.
    """

    def __init__(self, server: _TCPServer) -> None:
        self._server = server
        self._deadline = math.inf
        self._idle = False
        self._started = False
        self._scope: trio.CancelScope | None = None
        self._task_scope = trio.CancelScope()

    def _move(self, deadline: float) -> None:
        self._deadline = deadline
        if self._scope is not None:
            self._scope.deadline = deadline

    async def restart(self, task_group: Any, action: object) -> None:
        self._idle = True
        now = trio.current_time()
        terminating = self._server.context.terminated.is_set()
        self._move(now if terminating else now + self._server.config.keep_alive_timeout)
        if not self._started:
            self._started = True
            task_group._nursery.start_soon(self._watch)

    async def stop(self) -> None:
        self._idle = False
        self._move(math.inf)

    def close(self) -> None:
        self._task_scope.cancel()

    async def _watch(self) -> None:
        with self._task_scope:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._scope = scope
                await self._server.context.terminated.wait()
                if not self._idle:
                    await trio.sleep_forever()  # restart() moves the deadline to now
            with trio.CancelScope(shield=True):
                await self._server._initiate_server_close()


class _TCPServer(TCPServer):
    """hypercorn's connection handler with :class:`_IdleTimer` as its keep-alive timer."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.idle_task = _IdleTimer(self)  # type: ignore[assignment]

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self.idle_task.close()  # type: ignore[attr-defined]


# -- the serve loop ----------------------------------------------------------------------


def _direct_app(app: ASGIApp) -> DirectApp | None:
    """The fast-endpoint dispatcher in front of a Quart app (its ``asgi_app``, Quart's
    middleware seam), whose requests the direct HTTP/1.1 path answers; None otherwise."""
    candidate = getattr(app, "asgi_app", None)
    return candidate if isinstance(candidate, DirectApp) else None


async def _serve(
    app: ASGIApp,
    listener: trio.SocketListener,
    holder: SSLContextHolder | None,
    bound: str,
    *,
    lifespan: bool,
    shutdown_trigger: ShutdownTrigger | None,
    graceful_timeout: float,
    limits: Limits,
    load: ListenerLoad,
    stream_handlers: Mapping[str, StreamHandler],
    task_status: trio.TaskStatus[str],
) -> None:
    config = _make_config(graceful_timeout, limits)
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    life = Lifespan(ASGIWrapper(app), config, lifespan_state) if lifespan else None
    direct = _direct_app(app)
    facts = None
    if direct is not None:
        connections = DirectConnections()
        facts = ListenerFacts(direct, limits, load, bound, connections, HTTPDate(time.time))

    async def handle(stream: trio.SocketStream) -> None:
        extensions: dict[str, Any] = {_EXT: {"listener": "unix"}}
        served: trio.abc.Stream = stream
        if holder is not None:
            # Read the pair and context together (no await between): a concurrent swap
            # applies to the next connection.
            server_pem, ssl_context = holder.pair.cert.decode(), holder.context
            ssl_stream = TLSStream(stream, ssl_context, server_side=True)
            try:
                with trio.fail_after(config.ssl_handshake_timeout):
                    await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await trio.aclose_forcefully(ssl_stream)
                return
            extensions = _tls_extensions(ssl_stream, server_pem)
            protocol = ssl_stream.selected_alpn_protocol()
            if protocol is not None and protocol != "http/1.1":
                # A non-HTTP protocol on the same port (the Raft channel), chosen by ALPN
                # during the handshake; one nobody serves here ends the connection.
                stream_handler = stream_handlers.get(protocol)
                if stream_handler is not None:
                    await stream_handler(ssl_stream, extensions)
                await trio.aclose_forcefully(ssl_stream)
                return
            served = ssl_stream
        if facts is None:
            await serve_hypercorn(served, extensions, b"")
            return
        await serve_http1(served, facts, extensions, partial(serve_hypercorn, served, extensions))
        if holder is not None:  # a TLS close_notify, as hypercorn sends (if it goes out soon)
            with trio.move_on_after(1.0):
                await served.aclose()

    async def serve_hypercorn(
        served: trio.abc.Stream, extensions: dict[str, Any], replay: bytes
    ) -> None:
        wrapped = ASGIWrapper(_ConnectionApp(app, extensions, load, limits, bound))
        state = ConnectionState(lifespan_state.copy())
        coalesced = _CoalescingStream(served, replay)
        await _TCPServer(wrapped, config, context, state, coalesced)

    async def counted(stream: trio.SocketStream) -> None:
        try:
            await handle(stream)
        finally:
            load.connections -= 1
            await trio.aclose_forcefully(stream)  # as trio.serve_listeners does

    async with trio.open_nursery() as lifespan_nursery:
        if life is not None:
            await lifespan_nursery.start(life.handle_lifespan)
            await life.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            async with trio.open_nursery() as accept_nursery:
                accept_nursery.start_soon(
                    _accept_loop, listener, counted, server_nursery, limits, load, bound
                )
                logger.info("listening on %s", bound)
                task_status.started(bound)
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                await shutdown_trigger()
                logger.info("shutting down listener %s", bound)
                accept_nursery.cancel_scope.cancel()
            # Stop accepting (close the socket, so new clients are refused at once); idle
            # keep-alive connections close; in-flight ones get graceful_timeout to finish
            # before they are cancelled.
            await listener.aclose()
            await context.terminated.set()
            if facts is not None:
                facts.connections.terminate()
            server_nursery.cancel_scope.deadline = trio.current_time() + graceful_timeout
        if life is not None:
            await life.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    limits: Limits,
    load: ListenerLoad,
    bound: str,
) -> None:
    """Accept connections and start ``handler`` for each in ``nursery``; a connection over
    ``limits.max_connections`` is closed at once. Counting happens here, in accept order,
    so the cap is exact."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            logger.error("%s: accept failed (%s); retrying in 0.1 s", bound, exc)
            await trio.sleep(0.1)
            continue
        if load.connections >= limits.max_connections:
            load.refused_connections += 1
            if load.should_warn():
                logger.warning(
                    "%s: refusing connections: %d open (%d refused so far)",
                    bound,
                    load.connections,
                    load.refused_connections,
                )
            await trio.aclose_forcefully(stream)
            continue
        load.connections += 1
        nursery.start_soon(handler, stream)


async def serve_tcp(
    app: ASGIApp,
    address: str,
    ssl_context_holder: SSLContextHolder,
    *,
    lifespan: bool = True,
    shutdown_trigger: ShutdownTrigger | None = None,
    graceful_timeout: float = 5.0,
    limits: Limits = DEFAULT_LIMITS,
    load: ListenerLoad | None = None,
    stream_handlers: Mapping[str, StreamHandler] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over mutual TLS on ``address`` until cancelled or until
    ``shutdown_trigger()`` returns (then stop accepting and drain for ``graceful_timeout``
    seconds).

    ``limits`` bound connections, requests in flight and slow clients; ``load`` (optional)
    counts them. ``address`` is ``ip:port``; port 0 lets the OS choose, no port means 8443.
    ``task_status.started`` gets the bound ``ip:port``. Raises UnavailableError if the
    address cannot be bound (e.g. something already listens there). With ``lifespan``
    the app's ASGI lifespan runs around serving (turn it off when one app is served on
    several listeners, or when the owner runs startup itself). ``stream_handlers`` maps an
    ALPN protocol name to a :data:`StreamHandler` that serves connections negotiating it
    (the server's SSL context must offer that protocol); ``http/1.1`` or no ALPN means
    HTTP."""
    host, port = parse_address(address, default_port=DEFAULT_PORT, allow_port_zero=True)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UnavailableError(f"Cannot listen on {address}: {exc}") from exc
    listener = listeners[0]
    for extra in listeners[1:]:
        await extra.aclose()
    sockname = listener.socket.getsockname()
    bound = format_address(sockname[0], sockname[1])
    async with listener:
        await _serve(
            app,
            listener,
            ssl_context_holder,
            bound,
            lifespan=lifespan,
            shutdown_trigger=shutdown_trigger,
            graceful_timeout=graceful_timeout,
            limits=limits,
            load=load if load is not None else ListenerLoad(),
            stream_handlers=stream_handlers or {},
            task_status=task_status,
        )


def _bind_unix(path: str, mode: int, group: str | int | None) -> stdlib_socket.socket:
    if os.path.exists(path):
        probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket file
        else:
            raise UnavailableError(f"Something is already listening on {path}")
        finally:
            probe.close()
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if group is not None:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        sock.listen(128)
    except (OSError, KeyError) as exc:
        sock.close()
        raise UnavailableError(f"Cannot listen on unix socket {path}: {exc}") from exc
    return sock


async def serve_unix(
    app: ASGIApp,
    socket_path: str | os.PathLike[str],
    mode: int = 0o660,
    group: str | int | None = None,
    *,
    lifespan: bool = True,
    shutdown_trigger: ShutdownTrigger | None = None,
    graceful_timeout: float = 5.0,
    limits: Limits = DEFAULT_LIMITS,
    load: ListenerLoad | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over plain HTTP on a unix socket (``mode``, optional ``group``).

    A stale socket file is replaced; a live one raises UnavailableError. The socket file
    is removed on exit. ``task_status.started`` gets the socket path.
    """
    path = os.fspath(socket_path)
    sock = await trio.to_thread.run_sync(_bind_unix, path, mode, group)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    try:
        async with listener:
            await _serve(
                app,
                listener,
                None,
                path,
                lifespan=lifespan,
                shutdown_trigger=shutdown_trigger,
                graceful_timeout=graceful_timeout,
                limits=limits,
                load=load if load is not None else ListenerLoad(),
                stream_handlers={},
                task_status=task_status,
            )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
