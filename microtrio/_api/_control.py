"""``/core/control``: init (bootstrap/join), shutdown and join tokens (control socket only)."""

from __future__ import annotations

import datetime
from typing import Any

import trio
from quart import Request

from .._certs import fingerprint
from .._cluster import _members as members
from .._cluster._names import validate_address, validate_name
from .._cluster._tokens import JoinToken, encode_token, new_secret
from .._db._status import DatabaseStatus
from .._errors import BadRequestError, UnavailableError
from ._resources import Endpoint, EndpointAction, Resources
from ._router import read_json_object
from ._state import ControlRequest, State

__all__ = ["control_resources", "issue_token", "token_records"]


def _string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequestError(f"{what} must be an object of strings")
    return dict(value)


def _init_address(value: object) -> str:
    """``ip:port``; port 0 is allowed here (the core listener picks a free port and the
    bound address becomes the member's address)."""
    if isinstance(value, str) and value.endswith(":0"):
        host = validate_address(value[:-2] + ":1").rpartition(":")[0]
        return f"{host}:0"
    return validate_address(value)


async def _init(state: State, req: Request) -> Any:
    body = await read_json_object(req)
    bootstrap = body.get("bootstrap", False)
    token = body.get("join_token", "") or ""
    if not isinstance(bootstrap, bool) or not isinstance(token, str):
        raise BadRequestError("'bootstrap' must be a boolean and 'join_token' a string")
    if bootstrap and token:
        raise BadRequestError("Invalid options - received join token and bootstrap flag")
    if not bootstrap and not token:
        raise BadRequestError("Invalid options - expected a join token or the bootstrap flag")
    request = ControlRequest(
        name=validate_name(body.get("name")),
        address=_init_address(body.get("address")),
        bootstrap=bootstrap,
        join_token=token,
        config=_string_map(body.get("config"), "'config'"),
    )
    status = state.database_status
    if status is not DatabaseStatus.NOT_INITIALIZED:
        raise BadRequestError(f"Unable to initialize cluster: {status}")
    await state.control.initialise(request)
    return {}


async def _shutdown(state: State, req: Request) -> Any:
    if state.shutting_down:
        raise UnavailableError("Shutdown already in progress")
    await state.control.shutdown()
    return {}


def _join_addresses(state: State) -> list[str]:
    addresses = sorted({m.address for m in state.truststore.members() if m.address})
    return addresses or [state.address]


async def issue_token(state: State, name: str, expire_after_ns: int) -> str:
    """Create and store a join token for ``name``; return the encoded token string."""
    validate_name(name)
    if expire_after_ns < 0:
        raise BadRequestError("'expire_after' must not be negative")
    cluster_crt = await trio.to_thread.run_sync(state.state_dir.cluster_crt.read_bytes)
    secret = new_secret()
    now = state.now()
    expiry = None
    if expire_after_ns:
        try:
            expiry = now + datetime.timedelta(microseconds=expire_after_ns / 1000)
        except OverflowError as exc:  # past year 9999 (or too large for a float)
            raise BadRequestError("'expire_after' is too large") from exc

    def store(conn: Any) -> None:
        members.insert_token(conn, name=name, secret=secret, expiry=expiry, now=now)

    await state.database.transaction(store)
    return encode_token(JoinToken(secret, fingerprint(cluster_crt), tuple(_join_addresses(state))))


async def token_records(state: State) -> list[dict[str, str]]:
    """Unexpired tokens as ``[{name, token, expires_at}]`` (no expiry: the zero time)."""
    now = state.now()
    rows = await state.database.read(lambda conn: members.list_tokens(conn, now))
    cluster_crt = await trio.to_thread.run_sync(state.state_dir.cluster_crt.read_bytes)
    fp = fingerprint(cluster_crt)
    addresses = tuple(_join_addresses(state))
    return [
        {
            "name": row.name,
            "token": encode_token(JoinToken(row.secret, fp, addresses)),
            "expires_at": members.format_time(row.expiry),
        }
        for row in rows
    ]


async def _tokens_post(state: State, req: Request) -> Any:
    body = await read_json_object(req)
    name = body.get("name")
    expire_after = body.get("expire_after", 0)
    if not isinstance(expire_after, int) or isinstance(expire_after, bool):
        raise BadRequestError("'expire_after' must be an integer number of nanoseconds")
    return await issue_token(state, validate_name(name), expire_after)


async def _tokens_get(state: State, req: Request) -> Any:
    return await token_records(state)


def control_resources() -> Resources:
    return Resources(
        "core/control",
        [
            Endpoint(
                "",
                name="control",
                post=EndpointAction(_init),
                allowed_before_init=True,
            ),
            Endpoint(
                "shutdown",
                name="shutdown",
                post=EndpointAction(_shutdown),
                allowed_before_init=True,
                allowed_during_shutdown=True,
            ),
            Endpoint(
                "tokens",
                name="tokens",
                post=EndpointAction(_tokens_post),
                get=EndpointAction(_tokens_get),
            ),
        ],
    )
