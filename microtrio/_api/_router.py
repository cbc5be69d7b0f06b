"""Routing, trust and dispatch for every listener (theory of operation).

Each listener (control socket, core TLS listener, pre-init listener, additional servers) is a
Quart-Trio app with one catch-all route; :func:`dispatch` does the rest, in this order:

1. ``GET /`` answers ``["/1.0"]``; a path no endpoint matches answers 404 (paths are matched
   segment by segment, not cleaned, no slash redirects).
2. A method without a handler answers 501.
3. Trust (:func:`is_trusted`, the ONE place deciding it) against the route's
   :class:`Access` (:func:`route_access`: :data:`CORE_POLICY` for every ``/core`` route, the
   action's ``allow_untrusted`` for application routes): an untrusted request to a
   ``TRUSTED`` route answers 403.
   Then the body-size limit: a ``Content-Length`` over ``Limits.max_body_size`` answers 413
   (a chunked body over it answers 413 when read).
4. Shutdown (503 "Daemon is shutting down") and not-initialised (503 with the database status
   text) gates, unless the endpoint is allowed then.
   Then the action's ``access_handler`` gate, and the route's body check
   (``POST /core/internal/sql``: a query over ``Limits.max_sql_length`` answers 400).
5. ``?target=<member>`` forwarding for actions with ``proxy_target``.
6. The handler; its return value becomes a sync envelope, its MicrotrioError an error
   envelope (mapping in ``_envelope``).

Trust is checked before the 503 gates so that an untrusted caller learns nothing but 403.
(The listener itself answers 503 before any of this when too many requests are in flight,
see ``_listener``.)
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast, final

import trio
from quart import Request, Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .._db._status import DatabaseStatus
from .._errors import (
    BadRequestError,
    ForbiddenError,
    MicrotrioError,
    NotFoundError,
    NotImplementedMethodError,
    UnavailableError,
)
from ._envelope import EnvelopeResponse, error_from_exception, error_response, sync_response
from ._fast import FastDispatcher, FastRequest, has_fast_actions
from ._limits import DEFAULT_LIMITS, Limits, PayloadTooLargeError
from ._listener import is_trusted_scope, listener_kind
from ._resources import Endpoint, EndpointAction, Resources
from ._state import State

if TYPE_CHECKING:
    from ._metrics import RequestMetrics

__all__ = [
    "CORE_POLICY",
    "Access",
    "ListenerContext",
    "ListenerKind",
    "Router",
    "answer",
    "build_app",
    "dispatch",
    "is_trusted",
    "read_json",
    "read_json_object",
    "route_access",
    "websocket_allowed",
]

logger = logging.getLogger("microtrio.api")

#: Scope key carrying the matched endpoint's name (the metrics label).
_LABEL = "microtrio.endpoint"
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class ListenerKind(enum.Enum):
    UNIX = "unix"
    CORE = "core"
    PRE_INIT = "pre-init"
    EXTRA = "extra"


class Access(enum.Enum):
    """Who may call a route (on top of being able to reach the listener at all)."""

    #: Anyone: no certificate needed, any ``Host``.
    OPEN = "open"
    #: The control socket, or a TLS caller with the right ``Host`` and a valid truststore
    #: certificate.
    TRUSTED = "trusted"


#: The access rule of every route under ``/core``, by ``(method, path pattern)``; a ``/core``
#: route not listed is ``TRUSTED`` (default deny), whatever its action's ``allow_untrusted``
#: says. Untrusted callers reach exactly the status endpoint and join admission (the token
#: secret protects the latter). Heartbeats and the Raft channel are listed to make the rule
#: explicit: unlike microcluster, only trusted members may send them. (The Raft websocket
#: is served by the transport's own route, which checks the certificate itself; the access
#: matrix test holds both to this table.)
CORE_POLICY: Final[Mapping[tuple[str, str], Access]] = {
    ("GET", "/core/1.0"): Access.OPEN,
    ("POST", "/core/internal/cluster"): Access.OPEN,
    ("POST", "/core/internal/heartbeat"): Access.TRUSTED,
    ("GET", "/core/internal/raft"): Access.TRUSTED,
}


def _is_core(pattern: str) -> bool:
    return pattern == "/core" or pattern.startswith("/core/")


def route_access(method: str, pattern: str, action: EndpointAction) -> Access:
    """The access rule of ``method`` on the route ``pattern`` (``/core/1.0/tokens/{name}``)."""
    if _is_core(pattern):
        return CORE_POLICY.get((method.upper(), pattern), Access.TRUSTED)
    return Access.OPEN if action.allow_untrusted else Access.TRUSTED


@final
@dataclass(frozen=True, slots=True)
class _Route:
    segments: tuple[str, ...]
    endpoint: Endpoint
    after_init: bool

    @property
    def pattern(self) -> str:
        return "/" + "/".join(self.segments)


def _join(prefix: str, path: str) -> str:
    parts = [p for p in (prefix.strip("/"), path.strip("/")) if p]
    return "/" + "/".join(parts)


@final
class Router:
    """Matches a request path against the mounted resources.

    ``after_init`` resources are served only once the member is initialised (application
    servers without ``pre_init``); before that they answer 503 with the database status.
    """

    def __init__(
        self, resources: Sequence[Resources], after_init: Sequence[Resources] = ()
    ) -> None:
        routes = []
        for group, late in ((resources, False), (after_init, True)):
            for res in group:
                for ep in res.endpoints:
                    for path in (ep.path, *(a.path for a in ep.aliases)):
                        full = _join(res.path_prefix, path)
                        routes.append(_Route(tuple(full.split("/")[1:]), ep, late))
        self._routes = tuple(routes)
        for route in self._routes:
            for method in ("GET", "PUT", "POST", "DELETE", "PATCH"):
                action = route.endpoint.action(method)
                if action is None or not _is_core(route.pattern):
                    continue
                if action.allow_untrusted != (
                    route_access(method, route.pattern, action) is Access.OPEN
                ):
                    logger.warning(
                        "%s %s: allow_untrusted=%s is overridden by the core access policy",
                        method,
                        route.pattern,
                        action.allow_untrusted,
                    )

    def routes(self) -> list[tuple[str, Endpoint]]:
        """Every mounted ``(path, endpoint)`` in match order (for the OpenAPI document)."""
        return [("/" + "/".join(r.segments), r.endpoint) for r in self._routes]

    def match(self, path: str) -> tuple[Endpoint, dict[str, str], bool] | None:
        """``(endpoint, path variables, served only after init)`` or None."""
        found = self._lookup(path)
        return None if found is None else (found[0].endpoint, found[1], found[0].after_init)

    def _lookup(self, path: str) -> tuple[_Route, dict[str, str]] | None:
        segments = path.split("/")[1:] if path.startswith("/") else None
        if segments is None:
            return None
        for route in self._routes:
            found = _match(route.segments, segments)
            if found is not None:
                return route, found
        return None

    def access_table(self) -> list[tuple[str, str, Access]]:
        """``(method, path pattern, access)`` of every mounted action, in match order."""
        table = []
        for route in self._routes:
            for method in ("GET", "PUT", "POST", "DELETE", "PATCH"):
                action = route.endpoint.action(method)
                if action is not None:
                    table.append(
                        (method, route.pattern, route_access(method, route.pattern, action))
                    )
        return table


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    found: dict[str, str] = {}
    for pat, seg in zip(pattern, segments, strict=True):
        if pat.startswith("{") and pat.endswith("}"):
            if not seg:
                return None
            found[pat[1:-1]] = seg
        elif pat != seg:
            return None
    return found


@final
@dataclass(frozen=True, slots=True)
class ListenerContext:
    """Everything dispatch needs about one listener."""

    state: State
    kind: ListenerKind
    router: Router
    #: The bound ``ip:port`` of a TLS listener; the ``Host`` header must equal it to be trusted.
    expected_host: Callable[[], str] | None = None
    #: Where each request's latency is observed (``GET /core/1.0/metrics``).
    metrics: RequestMetrics | None = None
    #: Body, SQL and timeout limits (the listener applies the connection-level ones).
    limits: Limits = DEFAULT_LIMITS


def is_trusted(ctx: ListenerContext, scope: MutableMapping[str, Any]) -> bool:
    """The one trust decision (reference 2.2, tightened), built on the listener seam.

    * control socket (the scope says so, set by our own unix listener): trusted.
    * TLS listeners: trusted only when the ``Host`` header equals the listener's bound address
      and a presented client certificate is byte-identical to a truststore certificate within
      its validity period. A scope without a visible certificate is untrusted.
      Unlike microcluster, the pre-init listener does not trust everyone: before init the
      truststore is empty, so only the open endpoints answer there.
    """
    if ctx.kind is ListenerKind.UNIX:
        return listener_kind(scope) == "unix"
    host = ctx.expected_host() if ctx.expected_host is not None else ""
    if not host:
        return False
    return is_trusted_scope(scope, ctx.state.truststore, expected_host=host, now=ctx.state.now())


async def read_json(req: Request) -> Any:
    """The request body as JSON, or BadRequestError (400) for malformed or empty input."""
    data = await req.get_data(as_text=False)
    if not data:
        raise BadRequestError("Request body is empty; expected JSON")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: recursion
        raise BadRequestError(f"Invalid JSON in request body: {exc}") from exc


async def read_json_object(req: Request) -> dict[str, Any]:
    value = await read_json(req)
    if not isinstance(value, dict):
        raise BadRequestError("Request body must be a JSON object")
    return value


async def dispatch(ctx: ListenerContext, req: Request) -> Response:
    """Answer one request (see the module docstring for the order of the gates)."""
    outcome = await answer(ctx, req)
    return outcome if isinstance(outcome, Response) else _to_quart(outcome)


async def answer(
    ctx: ListenerContext,
    req: Request | FastRequest,
    found: tuple[_Route, dict[str, str]] | None = None,
) -> Response | EnvelopeResponse:
    """The gates, the handler and the metrics for one request, on either path: a Quart
    request, or a :class:`~microtrio._api._fast.FastRequest` (duck-typed: it has every
    request attribute the gates use). ``found`` is the route if the caller matched it
    already. Returns the handler's own Response or an envelope."""
    start = trio.current_time()
    request = cast("Request", req)
    outcome = await _answer(ctx, request, found)
    if ctx.metrics is not None:
        endpoint = str(cast("MutableMapping[str, Any]", request.scope).get(_LABEL, "unmatched"))
        elapsed = trio.current_time() - start
        status = outcome.status if isinstance(outcome, EnvelopeResponse) else outcome.status_code
        ctx.metrics.observe(ctx.kind.value, endpoint, request.method, status, elapsed)
    return outcome


async def _answer(
    ctx: ListenerContext, req: Request, found: tuple[_Route, dict[str, str]] | None
) -> Response | EnvelopeResponse:
    try:
        result = await _dispatch(ctx, req, found)
    except MicrotrioError as exc:
        if exc.status >= 500:
            logger.warning("%s: %s %s failed: %s", ctx.state.name, req.method, req.path, exc)
        return error_from_exception(exc)
    except RequestEntityTooLarge:  # a chunked body over MAX_CONTENT_LENGTH, seen when read
        return error_from_exception(_too_large(ctx.limits))
    except HTTPException as exc:  # Quart's own refusals (e.g. 408 for a body too slow)
        code = exc.code if exc.code is not None and 400 <= exc.code <= 599 else 400
        return error_response(code, exc.description or None)
    except Exception as exc:  # a handler bug or a foreign error: mapped (and logged) here
        return error_from_exception(exc)
    if isinstance(result, Response):
        return result
    if result is None or (type(result) is dict and not result):
        return _EMPTY_SUCCESS  # the most common answer of a write: encoded once
    return sync_response(result)


_EMPTY_SUCCESS: Final = sync_response({})


def _to_quart(envelope: EnvelopeResponse) -> Response:
    return Response(envelope.body, status=envelope.status, headers=dict(envelope.headers))


async def _dispatch(
    ctx: ListenerContext, req: Request, found: tuple[_Route, dict[str, str]] | None = None
) -> Any:
    path = req.scope.get("path", req.path)
    if path == "/" and req.method == "GET":
        return ["/1.0"]
    if found is None:
        found = ctx.router._lookup(path)
    if found is None:
        raise NotFoundError("not found")
    route, variables = found
    endpoint, after_init = route.endpoint, route.after_init
    cast("MutableMapping[str, Any]", req.scope)[_LABEL] = endpoint.name or endpoint.path
    action = endpoint.action(req.method)
    if action is None:
        raise NotImplementedMethodError(f"Method {req.method} not implemented")
    state = ctx.state
    scope = cast("MutableMapping[str, Any]", req.scope)
    access = route_access(req.method, route.pattern, action)
    if access is not Access.OPEN and not is_trusted(ctx, scope):
        raise ForbiddenError("not authorized")
    length = req.content_length
    if length is not None and length > ctx.limits.max_body_size:
        raise _too_large(ctx.limits)
    if state.shutting_down and not endpoint.allowed_during_shutdown:
        raise UnavailableError("Daemon is shutting down")
    status = state.database_status
    if after_init and status is DatabaseStatus.NOT_INITIALIZED:
        raise UnavailableError(str(status))
    if not endpoint.allowed_before_init and status is not DatabaseStatus.ONLINE:
        raise UnavailableError(str(status))
    if action.access_handler is not None:
        await action.access_handler(state, req)
    check = _BODY_CHECKS.get((req.method.upper(), route.pattern))
    if check is not None:
        await check(ctx.limits, req)
    req.view_args = variables
    target = req.args.get("target", "")
    if action.proxy_target and target and target != state.name:
        return await _forward(ctx, req, action, target)
    return await action.handler(state, req)


def _too_large(limits: Limits) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body too large: the limit is {limits.max_body_size} bytes"
    )


async def _check_sql_length(limits: Limits, req: Request) -> None:
    """``POST /core/internal/sql``: a query over ``max_sql_length`` bytes answers 400."""
    body = await read_json_object(req)
    query = body.get("query")
    if isinstance(query, str):
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > limits.max_sql_length:
            raise BadRequestError(
                f"SQL text too long: {size} bytes, the limit is {limits.max_sql_length}"
            )


#: Checks of a request body run just before the handler, by ``(method, path pattern)``.
_BODY_CHECKS: Final[Mapping[tuple[str, str], Callable[[Limits, Request], Awaitable[None]]]] = {
    ("POST", "/core/internal/sql"): _check_sql_length,
}


async def _forward(ctx: ListenerContext, req: Request, action: EndpointAction, target: str) -> Any:
    """Send the request to member ``target`` and return its response metadata."""
    from .._cluster._members import member_address

    address = await member_address(ctx.state.database, target)
    if address is None:
        raise NotFoundError(f"Cluster member {target!r} not found")
    data = await req.get_data(as_text=False)
    body = await read_json(req) if data else None
    params = {k: v for k, v in req.args.items() if k != "target"}
    path = req.scope.get("path", req.path)
    async with await ctx.state.remote_client(address) as client:
        return await client.query(req.method, path, body, params=params)


def websocket_allowed(ctx: ListenerContext, scope: MutableMapping[str, Any]) -> bool:
    """The same decision for a websocket upgrade: its path's rule from
    :data:`CORE_POLICY` (``GET``; any other websocket is ``TRUSTED``), then :func:`is_trusted`."""
    path = str(scope.get("path", ""))
    access = CORE_POLICY.get(("GET", path), Access.TRUSTED)
    return access is Access.OPEN or is_trusted(ctx, scope)


def build_app(ctx: ListenerContext) -> QuartTrio:
    """A Quart-Trio app whose one catch-all route hands every request to :func:`dispatch`.

    Websocket routes added to it later are guarded by :func:`websocket_allowed` before their
    own handler runs: an untrusted upgrade is refused with a 403 error envelope. (The Raft
    channel is not a websocket: the listener hands it its TLS stream, chosen by ALPN.)"""
    app = QuartTrio(f"microtrio.{ctx.kind.value}")

    @app.before_websocket
    async def guard_websocket() -> Response | None:
        scope = cast("MutableMapping[str, Any]", websocket.scope)
        if websocket_allowed(ctx, scope):
            return None
        logger.warning(
            "%s: refused a websocket upgrade to %s from %s",
            ctx.state.name,
            scope.get("path"),
            scope.get("client"),
        )
        return _to_quart(error_from_exception(ForbiddenError("not authorized")))

    app.config["MAX_CONTENT_LENGTH"] = ctx.limits.max_body_size
    app.config["BODY_TIMEOUT"] = ctx.limits.body_timeout
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    async def handle(path: str = "") -> Response:
        return await dispatch(ctx, request)

    app.add_url_rule(
        "/",
        "root",
        handle,
        methods=_METHODS,
        defaults={"path": ""},
        provide_automatic_options=False,
    )
    app.add_url_rule(
        "/<path:path>", "any", handle, methods=_METHODS, provide_automatic_options=False
    )
    if has_fast_actions(ctx):  # Quart's middleware seam: fast actions skip the framework
        app.asgi_app = FastDispatcher(ctx, app.asgi_app)  # type: ignore[method-assign]
    return app
