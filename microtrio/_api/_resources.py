"""REST building blocks for applications: ``Endpoint``, ``EndpointAction``, ``Resources``, ``Server``.

These mirror microcluster's ``rest`` package. A handler is ``async def handler(state, request)``
receiving the member's :class:`~microtrio.State` and the Quart request; path variables
(``{name}`` segments) are in ``request.view_args``. It returns the response metadata (any
JSON-serialisable value; ``None`` means ``{}``), or a Quart ``Response`` to send as is, and
raises a :class:`~microtrio.MicrotrioError` to answer with an error envelope.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from .._cluster._names import validate_server_name
from .._errors import ValidationError

if TYPE_CHECKING:
    from quart import Request

    from ._state import State

__all__ = [
    "AccessHandler",
    "Endpoint",
    "EndpointAction",
    "EndpointAlias",
    "Handler",
    "Resources",
    "Server",
    "validate_servers",
]

Handler = Callable[["State", "Request"], Awaitable[Any]]
#: An extra gate run after the trust check: raise ``ForbiddenError`` (or any error) to refuse.
AccessHandler = Callable[["State", "Request"], Awaitable[None]]


@final
@dataclass(frozen=True, slots=True)
class EndpointAction:
    """One HTTP method of an endpoint.

    ``fast=True`` serves the action without the web framework: a bare ASGI dispatcher in
    front of the listener's Quart app answers it, with the same gates in the same order
    (trust, body limit, shutdown and init gates, ``access_handler``, ``?target=``
    forwarding), the same error envelopes and the same responses. The handler then gets a
    lighter request object: ``method``, ``path``, ``scope``, ``headers``, ``args``,
    ``view_args``, ``content_length``, ``await get_data(as_text=False)`` and
    ``await get_json()``, and may return metadata, a Quart ``Response`` with a body, or
    raise; it must not use Quart's ``request`` global. See ``docs/howto/performance.md``.
    """

    handler: Handler
    access_handler: AccessHandler | None = None
    allow_untrusted: bool = False
    proxy_target: bool = False
    fast: bool = False


@final
@dataclass(frozen=True, slots=True)
class EndpointAlias:
    name: str
    path: str


@final
@dataclass(frozen=True, slots=True)
class Endpoint:
    """A path under a resource prefix; ``{var}`` segments match one path segment."""

    path: str
    name: str = ""
    get: EndpointAction | None = None
    put: EndpointAction | None = None
    post: EndpointAction | None = None
    delete: EndpointAction | None = None
    patch: EndpointAction | None = None
    aliases: Sequence[EndpointAlias] = ()
    allowed_during_shutdown: bool = False
    allowed_before_init: bool = False

    def action(self, method: str) -> EndpointAction | None:
        return {
            "GET": self.get,
            "PUT": self.put,
            "POST": self.post,
            "DELETE": self.delete,
            "PATCH": self.patch,
        }.get(method.upper())


@final
@dataclass(frozen=True, slots=True)
class Resources:
    """Endpoints under ``/<path_prefix>/`` (for example ``"1.0"``)."""

    path_prefix: str
    endpoints: Sequence[Endpoint] = ()


@final
@dataclass(frozen=True, slots=True)
class Server:
    """An application server (microcluster's ``rest.Server``).

    * ``core_api``: mount the resources on the core listener (no address, no dedicated
      certificate, paths may not start with ``core``).
    * ``serve_unix`` (only with ``core_api``): also mount them on the control socket.
    * ``pre_init``: also serve them before the member is initialised.
    * otherwise the server gets its own TLS listener at ``address`` (none: not started), with
      its own certificate when ``dedicated_certificate`` (else the cluster certificate).
    """

    resources: Sequence[Resources] = field(default_factory=tuple)
    address: str = ""
    core_api: bool = False
    pre_init: bool = False
    serve_unix: bool = False
    dedicated_certificate: bool = False


_SEGMENT_VAR = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


def _full_paths(server: Server) -> list[str]:
    paths = []
    for res in server.resources:
        prefix = res.path_prefix.strip("/")
        for ep in res.endpoints:
            for p in (ep.path, *(a.path for a in ep.aliases)):
                paths.append(f"{prefix}/{p.strip('/')}".strip("/"))
    return paths


def _normalise(path: str) -> str:
    """A path with every ``{var}`` segment made equal, to find clashing routes."""
    return "/".join("{}" if _SEGMENT_VAR.match(s) else s for s in path.split("/"))


def validate_servers(servers: Mapping[str, Server], *, core_address: str = "") -> None:
    """Check the application's servers as microcluster does at start; raise ValidationError."""
    core_seen: set[str] = set()
    addresses: set[str] = set()
    for name, server in servers.items():
        validate_server_name(name)
        if not server.resources:
            raise ValidationError(f"Server {name!r} has no resources")
        for res in server.resources:
            if not res.endpoints:
                raise ValidationError(
                    f"Server {name!r} resource {res.path_prefix!r} has no endpoints"
                )
        if server.serve_unix and not server.core_api:
            raise ValidationError(f"Server {name!r}: serve_unix requires core_api")
        paths = [_normalise(p) for p in _full_paths(server)]
        if server.core_api:
            if server.address or server.dedicated_certificate:
                raise ValidationError(
                    f"Core API server {name!r} may not have an address or a dedicated certificate"
                )
            for p in paths:
                if p == "core" or p.startswith("core/"):
                    raise ValidationError(f"Server {name!r}: path {p!r} may not start with 'core'")
                if p in core_seen:
                    raise ValidationError(f"Server {name!r}: duplicate core path {p!r}")
                core_seen.add(p)
        else:
            if len(set(paths)) != len(paths):
                raise ValidationError(f"Server {name!r} has duplicate paths")
            if server.address:
                if server.address in addresses or server.address == core_address:
                    raise ValidationError(f"Server {name!r}: address {server.address} is in use")
                addresses.add(server.address)
