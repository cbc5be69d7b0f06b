"""``/core/1.0``: status, readiness, members, certificates, servers and token revocation."""

from __future__ import annotations

from typing import Any

import trio
from quart import Request

from .._client import Client
from .._cluster import _members as members
from .._cluster._names import format_address, parse_address, validate_name
from .._db._extensions import encode_extensions
from .._errors import (
    BadRequestError,
    MicrotrioError,
    NotFoundError,
    NotImplementedMethodError,
    UnavailableError,
    ValidationError,
)
from ._resources import Endpoint, EndpointAction, Resources
from ._router import read_json_object
from ._state import State

__all__ = [
    "cert_name",
    "certificates_put",
    "member_json",
    "public_resources",
    "read_key_pair",
    "status_json",
]

ONLINE = "ONLINE"
UNREACHABLE = "UNREACHABLE"


def status_json(state: State) -> dict[str, Any]:
    """``GET /core/1.0`` metadata (microcluster's ``Server``)."""
    return {
        "name": state.name,
        "address": state.address,
        "version": state.version,
        "ready": state.database_open,
        "extensions": encode_extensions(state.extensions),
    }


async def _status(state: State, req: Request) -> Any:
    return status_json(state)


async def _ready(state: State, req: Request) -> Any:
    if state.shutting_down:
        raise UnavailableError("Daemon is shutting down")
    if not state.ready:
        raise UnavailableError("Daemon not yet ready")
    return {}


def member_json(row: members.MemberRow, status: str) -> dict[str, Any]:
    """One ``ClusterMember`` in its JSON shape (``ClusterMemberLocal`` flattened)."""
    return {
        "name": row.name,
        "address": row.address,
        "certificate": row.certificate,
        "role": row.role,
        "schema_internal_version": row.schema_internal,
        "schema_external_version": row.schema_external,
        "last_heartbeat": row.heartbeat,
        "status": status,
        "extensions": encode_extensions(list(row.api_extensions)),
        "secret": "",
    }


async def _probe(state: State, address: str) -> str:
    """``ONLINE`` if the member at ``address`` answers ``/core/1.0/ready``."""
    if address == state.address:
        return ONLINE if state.ready else UNREACHABLE
    try:
        with trio.move_on_after(5):
            async with await state.remote_client(address) as client:
                await client.query("GET", "/core/1.0/ready")
                return ONLINE
    except MicrotrioError:
        return UNREACHABLE
    return UNREACHABLE


async def _cluster_get(state: State, req: Request) -> Any:
    rows = await state.database.read(members.list_members)
    statuses = [UNREACHABLE] * len(rows)

    async def probe(i: int, address: str) -> None:
        statuses[i] = await _probe(state, address)

    async with trio.open_nursery() as nursery:
        for i, row in enumerate(rows):
            nursery.start_soon(probe, i, row.address)
    return [member_json(row, status) for row, status in zip(rows, statuses, strict=True)]


async def _cluster_delete(state: State, req: Request) -> Any:
    name = validate_name((req.view_args or {}).get("name"))
    if state.truststore.by_name(name) is None:
        raise NotFoundError(f"No remote exists with the given name {name!r}")
    rows = await state.database.read(members.list_members)
    if len(rows) <= 1:
        raise BadRequestError("Cannot remove the last cluster member")
    raise NotImplementedMethodError(
        "Removing members of a multi-member cluster is not supported yet"
    )


def cert_name(req: Request) -> str:
    """The ``{name}`` of ``/core/1.0/cluster/certificates/{name}`` (400 for a path-like one)."""
    name = str((req.view_args or {}).get("name", ""))
    if not name or "/" in name or "\\" in name or ".." in name:
        raise BadRequestError(f"Invalid certificate name {name!r}")
    return name


async def read_key_pair(req: Request) -> tuple[str, str, str | None]:
    """``(cert, key, ca or None)`` of a ``KeyPair`` body (400 when malformed)."""
    body = await read_json_object(req)
    cert, key, ca = body.get("cert"), body.get("key"), body.get("ca", "")
    if not isinstance(cert, str) or not isinstance(key, str) or not isinstance(ca, str | None):
        raise BadRequestError("'cert' and 'key' must be PEM strings")
    return cert, key, ca or None


async def certificates_put(state: State, req: Request) -> Any:
    """Replace a certificate on this member only (the cluster-wide rotation of the
    ``cluster`` certificate is in ``_cluster_routes.py``)."""
    name = cert_name(req)
    cert, key, ca = await read_key_pair(req)
    await state.control.replace_certificate(name, cert, key, ca)
    return {}


async def _servers_get(state: State, req: Request) -> Any:
    config = state.daemon_config
    servers = {} if config is None else config.to_dict()["servers"]
    return servers


async def _servers_put(state: State, req: Request) -> Any:
    body = await read_json_object(req)
    update: dict[str, str] = {}
    for name, value in body.items():
        address = value.get("address", "") if isinstance(value, dict) else None
        if not isinstance(address, str):
            raise BadRequestError(f"Server {name!r}: 'address' must be a string")
        if name not in state.extension_servers:
            raise ValidationError(f"{name!r} is not an additional server of this application")
        update[name] = _server_address(address) if address else ""
    used = [a for a in update.values() if a and not a.endswith(":0")]
    if len(set(used)) != len(used) or state.address in used:
        raise ValidationError("Server addresses must be unique and differ from the core address")
    await state.control.update_servers(update)
    await _notify_config_update(state)
    return {}


def _server_address(address: str) -> str:
    """``ip:port`` of an additional listener; port 0 lets the OS choose (as in
    ``Server.address``), so such addresses never clash with each other."""
    host, port = parse_address(address, allow_port_zero=True)
    return format_address(host, port)


async def _notify_config_update(state: State) -> None:
    """Run ``on-daemon-config-update`` with this member's config on every other member
    (the config is already applied here; a failure is still reported to the caller)."""
    config = state.daemon_config
    if config is None:
        return
    failures: list[MicrotrioError] = []

    async def one(client: Client) -> None:
        async with client:
            try:
                await client.notifier(state.address).query(
                    "POST", "/core/internal/hooks/on-daemon-config-update", config.to_dict()
                )
            except MicrotrioError as exc:
                failures.append(exc)

    clients = await state.cluster_clients()
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(one, client)
    if failures:
        raise failures[0]


async def _token_delete(state: State, req: Request) -> Any:
    name = validate_name((req.view_args or {}).get("name"))
    await state.database.transaction(lambda conn: members.delete_token(conn, name))
    return {}


def public_resources() -> Resources:
    return Resources(
        "core/1.0",
        [
            Endpoint(
                "",
                name="status",
                get=EndpointAction(_status, allow_untrusted=True),
                allowed_before_init=True,
                allowed_during_shutdown=True,
            ),
            Endpoint(
                "ready",
                name="ready",
                get=EndpointAction(_ready),
                allowed_before_init=True,
                allowed_during_shutdown=True,
            ),
            Endpoint("cluster", name="cluster", get=EndpointAction(_cluster_get)),
            Endpoint(
                "cluster/{name}",
                name="cluster/member",
                delete=EndpointAction(_cluster_delete),
            ),
            Endpoint(
                "cluster/certificates/{name}",
                name="cluster/certificates",
                put=EndpointAction(certificates_put),
                allowed_before_init=True,
            ),
            Endpoint(
                "daemon/servers",
                name="daemon/servers",
                get=EndpointAction(_servers_get),
                put=EndpointAction(_servers_put),
            ),
            Endpoint("tokens/{name}", name="tokens/name", delete=EndpointAction(_token_delete)),
        ],
    )
