"""``GET /core/1.0/openapi.json``: an OpenAPI 3.1 document generated from the route table.

The document is built from the very :class:`~microtrio._api._router.Router` a listener
dispatches with, so it lists exactly the paths and methods that listener serves: the core
endpoints, the application's endpoints mounted there, and itself. Each listener serves its
own document (the control socket's includes ``/core/control``; the core TLS listener's
does not).

Access: trusted callers only (like every endpoint but status and join admission): over the
control socket, or over mutual TLS with a certificate in the truststore. It is served before
initialisation too, so a new user can look at the control socket's API at once.

What is known from the code goes in: paths with ``{var}`` parameters, methods, whether an
untrusted caller may call it (``security``), ``?target=`` forwarding, the envelope every
endpoint answers with, and each handler's docstring as the summary. Request bodies are
declared loosely (JSON for core endpoints, any content for application endpoints): the
handlers parse them themselves. Extra facts are in ``x-microtrio`` on each operation.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from quart import Request, Response

from ._resources import Endpoint, EndpointAction, Resources
from ._state import State

__all__ = [
    "METHODS",
    "OPENAPI_PATH",
    "RoutesGetter",
    "build_openapi",
    "openapi_resources",
    "responds_with",
]

OPENAPI_PATH = "/core/1.0/openapi.json"
#: The methods an :class:`Endpoint` can have, in document order.
METHODS = ("get", "put", "post", "delete", "patch")

#: Returns a listener's route table, as :meth:`Router.routes` does.
RoutesGetter = Callable[[], Sequence[tuple[str, Endpoint]]]

F = TypeVar("F", bound=Callable[..., Any])
_CONTENT_ATTR = "__microtrio_content_type__"


def responds_with(content_type: str) -> Callable[[F], F]:
    """Mark a handler that answers a raw body of ``content_type`` instead of an envelope
    (the OpenAPI document then says so)."""

    def mark(fn: F) -> F:
        setattr(fn, _CONTENT_ATTR, content_type)
        return fn

    return mark


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_ENVELOPE_COMMON: dict[str, Any] = {
    "type": {"type": "string", "enum": ["sync", "async", "error"]},
    "status": {"type": "string"},
    "status_code": {"type": "integer"},
    "operation": {"type": "string"},
    "error_code": {"type": "integer"},
    "error": {"type": "string"},
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "mutualTLS": {
            "type": "mutualTLS",
            "description": (
                "A client certificate present in the member's truststore (over the control "
                "socket every caller is trusted)."
            ),
        }
    },
    "schemas": {
        "SyncResponse": {
            "type": "object",
            "description": "The LXD-style envelope of a successful answer.",
            "properties": {**_ENVELOPE_COMMON, "metadata": {}},
            "required": ["type", "status", "status_code", "metadata"],
        },
        "ErrorResponse": {
            "type": "object",
            "description": "The envelope of an error; error_code is the HTTP status.",
            "properties": dict(_ENVELOPE_COMMON),
            "required": ["type", "error_code", "error"],
        },
    },
    "responses": {
        "Error": {
            "description": "An error envelope (4xx/5xx)",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
    },
}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method}_{words or 'root'}"


def _summary(action: EndpointAction, fallback: str) -> str:
    doc = inspect.getdoc(action.handler)
    if doc:
        return doc.strip().splitlines()[0]
    return fallback


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "core" and len(parts) > 1:
        return "/".join(parts[:2])
    return parts[0] if parts else "root"


def _operation(
    method: str, path: str, endpoint: Endpoint, action: EndpointAction
) -> dict[str, Any]:
    core = path.startswith("/core/")
    params: list[dict[str, Any]] = [
        {"name": var, "in": "path", "required": True, "schema": {"type": "string"}}
        for var in _VAR.findall(path)
    ]
    if action.proxy_target:
        params.append(
            {
                "name": "target",
                "in": "query",
                "required": False,
                "description": "Forward the request to the cluster member of this name.",
                "schema": {"type": "string"},
            }
        )
    raw = getattr(action.handler, _CONTENT_ATTR, None)
    success: dict[str, Any] = {
        "description": "Success",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SyncResponse"}}},
    }
    if raw is not None:
        success = {"description": "Success", "content": {raw: {"schema": {"type": "string"}}}}
    op: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": _summary(action, f"{method.upper()} {endpoint.name or path}"),
        "tags": [_tag(path)],
        "security": [] if action.allow_untrusted else [{"mutualTLS": []}],
        "responses": {"200": success, "default": {"$ref": "#/components/responses/Error"}},
        "x-microtrio": {
            "name": endpoint.name,
            "allow_untrusted": action.allow_untrusted,
            "allowed_before_init": endpoint.allowed_before_init,
            "allowed_during_shutdown": endpoint.allowed_during_shutdown,
            "proxy_target": action.proxy_target,
        },
    }
    if params:
        op["parameters"] = params
    if method in ("put", "post", "patch"):
        content: dict[str, Any] = {"application/json": {"schema": {}}}
        if not core:
            content["application/octet-stream"] = {
                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
            }
        op["requestBody"] = {"required": False, "content": content}
    return op


def build_openapi(
    routes: Sequence[tuple[str, Endpoint]], *, title: str = "microtrio", version: str = "0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (``(path, endpoint)`` pairs, as
    :meth:`Router.routes` gives them) plus ``GET /``. The first route of a path wins, as in
    the router."""
    paths: dict[str, dict[str, Any]] = {
        "/": {
            "get": {
                "operationId": "get_root",
                "summary": "The supported API versions",
                "tags": ["root"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Success",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SyncResponse"}
                            }
                        },
                    }
                },
            }
        }
    }
    for path, endpoint in routes:
        if path in paths:
            continue
        item: dict[str, Any] = {}
        for method in METHODS:
            action = endpoint.action(method)
            if action is not None:
                item[method] = _operation(method, path, endpoint, action)
        paths[path] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{title} REST API",
            "version": version,
            "description": (
                "Generated from the member's route table. Every answer is an LXD-style "
                "envelope (see docs/api.md)."
            ),
        },
        "paths": paths,
        "components": _COMPONENTS,
    }


def openapi_resources(routes: RoutesGetter) -> Resources:
    """``core/1.0/openapi.json``, describing whatever ``routes()`` returns (the listener's
    own route table)."""

    @responds_with("application/json")
    async def openapi_document(state: State, req: Request) -> Any:
        """The OpenAPI 3.1 document of this listener's endpoints"""
        doc = build_openapi(routes(), title="microtrio", version=state.version)
        return Response(json.dumps(doc), status=200, content_type="application/json")

    return Resources(
        "core/1.0",
        [
            Endpoint(
                "openapi.json",
                name="openapi",
                get=EndpointAction(openapi_document),
                allowed_before_init=True,
            )
        ],
    )
