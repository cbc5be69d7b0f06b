"""Fast endpoints: a bare ASGI dispatcher in front of a listener's Quart app.

Theory of operation
-------------------
Quart-Trio costs, per request, a request object with an asyncio-style body future, a nursery
with two tasks (one reads the body, one runs the view), the app and request contexts,
werkzeug routing, signals, ``make_response`` and the response's async body iterator. For
the few routes that carry most of the load (a key-value PUT/GET, a forwarded write) that
is much of the request's CPU. An action marked ``EndpointAction(fast=True)`` skips it:

1. :class:`FastDispatcher` wraps the Quart app's ``asgi_app`` (Quart's own middleware seam,
   so the listener still serves ONE app: websocket routes, lifespan and every other route
   go to Quart unchanged). For an HTTP request it looks the path up in the listener's
   :class:`~microtrio._api._router.Router`; when the matched endpoint's action for the
   method is ``fast``, it answers the request itself, else it hands the request to Quart.
2. The request becomes a :class:`FastRequest`: werkzeug's sans-IO request (the base class
   of Quart's own: same ``headers``, ``args``, ``content_length``, ``mimetype``...) plus the
   ASGI ``scope``, ``view_args`` and a body read from ``receive`` under the same limits
   Quart applies (``Limits.max_body_size``: 413; ``Limits.body_timeout``: 408).
3. It goes through the SAME gate function as the Quart path
   (:func:`~microtrio._api._router.answer`: routing, 501, trust, body limit, shutdown and
   init gates, ``access_handler``, body checks, ``?target=`` forwarding, the handler, the
   error envelope mapping, the metrics), and the answer is sent as two ASGI messages with
   the headers Quart would send (lower-case names, ``content-type`` then
   ``content-length``).

4. On our own listeners the dispatcher is also a :class:`~microtrio._api._http1.DirectApp`:
   the listener's direct HTTP/1.1 path asks :meth:`FastDispatcher.match_direct` about each
   request head and has :meth:`FastDispatcher.respond_direct` answer the fast ones, so
   those never reach hypercorn, h11 or the ASGI wrapper (steps 2 and 3 are the same).

Everything the listener enforces happens before either path (connection cap, in-flight cap,
the client-certificate seam): the dispatcher sits inside the listener's connection wrapper,
or behind the direct path, which applies the same limits.
One difference: Quart cancels a view when the client disconnects mid-request; a fast
handler runs to its end (its answer is then dropped: a client gone before its body arrived
gets a 400 nobody reads), which for a write is the better outcome anyway.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast, final

import trio
from quart import Response
from quart.utils import encode_headers
from quart.wrappers.response import DataBody
from werkzeug.datastructures import Headers
from werkzeug.exceptions import (
    BadRequest,
    ClientDisconnected,
    RequestEntityTooLarge,
    RequestTimeout,
)
from werkzeug.sansio.request import Request as SansIORequest

from ._envelope import EnvelopeResponse
from ._http1 import ResponseParts
from ._listener import ASGIApp

if TYPE_CHECKING:
    from ._router import ListenerContext, _Route

__all__ = ["FastDispatcher", "FastRequest", "has_fast_actions"]


@final
class _Unknown:
    """``FastRequest(content_length=...)`` not given: read it from the headers."""


_UNKNOWN: Final = _Unknown()


@final
class FastRequest(SansIORequest):
    """What a fast handler gets instead of a Quart request (see ``EndpointAction.fast``).

    werkzeug's sans-IO request (Quart's request class derives from it too), so ``method``,
    ``path``, ``headers``, ``args``, ``content_length``, ``mimetype`` and ``is_json`` are
    the same objects a Quart handler sees; plus ``scope``, ``view_args``,
    ``await get_data(as_text=False)`` and ``await get_json()``.
    """

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        receive: Any,
        *,
        max_body_size: int,
        body_timeout: float,
        content_length: int | None | _Unknown = _UNKNOWN,
    ) -> None:
        self._headers: Headers | None = None
        super().__init__(
            scope["method"],
            scope.get("scheme", "https"),
            scope.get("server"),
            scope.get("root_path", ""),
            scope["path"],
            scope.get("query_string", b""),
            None,  # type: ignore[arg-type]  # built when first read (see headers)
            (scope.get("client") or ["<local>"])[0],
        )
        self.scope = scope
        self.view_args: dict[str, str] | None = None
        self._receive = receive
        self._max_body_size = max_body_size
        self._body_timeout = body_timeout
        self._body: bytes | None = None
        self._content_length = content_length

    @property
    def headers(self) -> Headers:
        """The request headers (title-case names, plus ``Remote-Addr``), built on first use:
        most fast handlers never read them."""
        if self._headers is None:
            headers = Headers()
            headers["Remote-Addr"] = self.remote_addr or ""
            for name, value in self.scope["headers"]:
                headers.add(name.decode("latin1").title(), value.decode("latin1"))
            self._headers = headers
        return self._headers

    @headers.setter
    def headers(self, value: Headers | None) -> None:
        self._headers = value

    @property
    def content_length(self) -> int | None:
        """As werkzeug's; given by the listener's HTTP/1.1 path, which parsed it already
        (None: no ``Content-Length``)."""
        if isinstance(self._content_length, _Unknown):
            return super().content_length
        return self._content_length

    async def _read_body(self) -> bytes:
        length = self.content_length
        if length is not None and length > self._max_body_size:
            raise RequestEntityTooLarge()
        data = bytearray()
        with trio.move_on_after(self._body_timeout) as scope:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":  # nobody reads the answer
                    raise ClientDisconnected()
                if message["type"] != "http.request":
                    continue
                data += message.get("body", b"")
                if len(data) > self._max_body_size:
                    raise RequestEntityTooLarge()
                if not message.get("more_body", False):
                    break
        if scope.cancelled_caught:
            raise RequestTimeout()
        return bytes(data)

    async def get_data(
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> Any:
        """The request body (bytes, or ``str`` with ``as_text``), as Quart's ``get_data``."""
        if parse_form_data:
            raise NotImplementedError("a fast handler cannot parse form data")
        if self._body is None:
            self._body = await self._read_body()
        data = self._body
        if not cache:
            self._body = b""
        return data.decode() if as_text else data

    async def get_json(self, force: bool = False, silent: bool = False) -> Any:
        """The body parsed as JSON, as Quart's ``get_json`` (None unless the content type
        is JSON or ``force``; a parse error is a 400 unless ``silent``)."""
        if not (force or self.is_json):
            return None
        text = await self.get_data(as_text=True)
        try:
            return json.loads(text)
        except ValueError as exc:
            if silent:
                return None
            raise BadRequest() from exc  # what Quart raises (outside debug mode)


def has_fast_actions(ctx: ListenerContext) -> bool:
    """Whether any route of this listener has a fast action (else no dispatcher is needed)."""
    return any(
        action is not None and action.fast
        for _, endpoint in ctx.router.routes()
        for action in (endpoint.get, endpoint.put, endpoint.post, endpoint.delete, endpoint.patch)
    )


def _response_parts(outcome: Response | EnvelopeResponse) -> tuple[int, list[Any], Any]:
    if isinstance(outcome, EnvelopeResponse):
        headers = [(k.lower().encode(), v.encode()) for k, v in outcome.headers]
        headers.append((b"content-length", str(len(outcome.body)).encode()))
        return outcome.status, headers, outcome.body
    return outcome.status_code, encode_headers(outcome.headers), None


def _is_variable(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _may_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether some path could match both route patterns."""
    return len(a) == len(b) and all(
        x == y or _is_variable(x) or _is_variable(y) for x, y in zip(a, b, strict=True)
    )


_FAST_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH")


def _fast_index(routes: Sequence[_Route]) -> list[tuple[_Route, list[_Route]]]:
    """Every route with a fast action, in match order, with the earlier routes that could
    match the same paths (an earlier one with a fast action is tried first anyway)."""
    index = []
    for i, route in enumerate(routes):
        actions = (route.endpoint.action(m) for m in _FAST_METHODS)
        if any(a is not None and a.fast for a in actions):
            earlier = [r for r in routes[:i] if _may_overlap(r.segments, route.segments)]
            index.append((route, earlier))
    return index


@final
class FastDispatcher:
    """``app.asgi_app = FastDispatcher(ctx, app.asgi_app)``: answers the fast actions of
    ``ctx``'s routes itself and hands everything else to ``fallback``."""

    def __init__(self, ctx: ListenerContext, fallback: ASGIApp) -> None:
        from ._router import _match, answer  # the router imports this module

        self._ctx = ctx
        self._fallback = fallback
        self._answer = answer
        self._match = _match
        self._fast_index = _fast_index(ctx.router._routes)

    def _fast_route(self, scope: MutableMapping[str, Any]) -> tuple[_Route, dict[str, str]] | None:
        if scope.get("type") != "http":
            return None
        return self.match_direct(scope.get("method", ""), scope.get("path", ""))

    def match_direct(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        """The route when ``method path`` is a fast action (the listener's direct HTTP/1.1
        path answers it through :meth:`respond_direct`), else None.

        The same answer as looking ``path`` up in the router (first matching route wins)
        and checking its action, but only the routes with a fast action are tried, each
        with the earlier routes that could take the same paths (usually none)."""
        if not path.startswith("/"):
            return None
        segments = path.split("/")[1:]
        match = self._match
        for route, earlier in self._fast_index:
            variables = match(route.segments, segments)
            if variables is None:
                continue
            if any(match(other.segments, segments) is not None for other in earlier):
                return None  # an earlier route takes this path, and it has no fast action
            action = route.endpoint.action(method)
            return (route, variables) if action is not None and action.fast else None
        return None

    async def respond_direct(
        self, route: object, scope: dict[str, Any], receive: Any, content_length: int | None
    ) -> ResponseParts:
        """Answer one request of a route :meth:`match_direct` returned."""
        found = cast("tuple[_Route, dict[str, str]]", route)
        return await self._respond(found, scope, receive, content_length)

    async def _respond(
        self,
        found: tuple[_Route, dict[str, str]],
        scope: MutableMapping[str, Any],
        receive: Any,
        content_length: int | None | _Unknown = _UNKNOWN,
    ) -> ResponseParts:
        ctx = self._ctx
        req = FastRequest(
            scope,
            receive,
            max_body_size=ctx.limits.max_body_size,
            body_timeout=ctx.limits.body_timeout,
            content_length=content_length,
        )
        outcome = await self._answer(ctx, req, found)
        status, headers, body = _response_parts(outcome)
        if body is None:
            assert isinstance(outcome, Response)
            data = outcome.response
            if isinstance(data, DataBody):  # bytes in memory: what Quart would send
                body = data.data[data.begin : data.end]
            else:
                body = await outcome.get_data(as_text=False)
        return status, headers, body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        found = self._fast_route(scope)
        if found is None:
            await self._fallback(scope, receive, send)
            return
        status, headers, body = await self._respond(found, scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
