"""``/core/internal``: SQL passthrough, truststore, hooks, database notification, self-reset."""

from __future__ import annotations

from typing import Any

import trio
from quart import Request

from .._client import NOTIFIER_USER_AGENT
from .._cluster._names import validate_name
from .._errors import BadRequestError, MicrotrioError, NotFoundError, RemoteError
from .._hooks import REMOTE_HOOKS, HookType
from ._resources import Endpoint, EndpointAction, Resources
from ._router import read_json_object
from ._state import ClusterMemberLocal, State

__all__ = ["fan_out", "internal_resources", "is_notification", "parse_member_local"]


async def _sql_get(state: State, req: Request) -> Any:
    schema_only = req.args.get("schema", "") not in ("", "0", "false")
    return {"text": await state.database.dump(schema_only=schema_only)}


async def _sql_post(state: State, req: Request) -> Any:
    body = await read_json_object(req)
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequestError("No query provided")
    results = await state.database.execute_sql(query)
    return {"Results": [r.to_json() for r in results]}


def parse_member_local(value: object) -> ClusterMemberLocal:
    """Validate a ``ClusterMemberLocal`` JSON object (400 when malformed)."""
    return ClusterMemberLocal.from_dict(value)


async def _truststore_post(state: State, req: Request) -> Any:
    member = parse_member_local(await read_json_object(req))
    await state.control.add_trusted(member, notify=not is_notification(req))
    return {}


async def _truststore_delete(state: State, req: Request) -> Any:
    name = validate_name((req.view_args or {}).get("name"))
    if state.truststore.by_name(name) is None:
        raise NotFoundError(f"No truststore entry named {name!r}")
    await state.control.remove_trusted(name, notify=not is_notification(req))
    return {}


async def fan_out(state: State, method: str, skip: set[str], *args: str) -> None:
    """Call ``Client.<method>(*args)`` as a notification on every trusted member not in
    ``skip`` (concurrently; the first failure is raised after all finished)."""
    peers = [m for m in state.truststore.members() if m.name not in skip]
    failures: list[MicrotrioError] = []

    async def one(name: str, address: str) -> None:
        try:
            async with await state.remote_client(address) as client:
                await getattr(client.notifier(state.address), method)(*args)
        except MicrotrioError as exc:
            failures.append(
                type(exc)(f"{name}: {exc}")
                if not isinstance(exc, RemoteError)
                else RemoteError(f"{name}: {exc}", exc.status)
            )

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(one, peer.name, peer.address)
    if failures:
        raise failures[0]


def is_notification(req: Request) -> bool:
    """A fan-out request from a peer (microcluster's ``IsNotification``)."""
    return req.headers.get("User-Agent", "") == NOTIFIER_USER_AGENT


def _force(body: dict[str, Any]) -> bool:
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequestError("'force' must be a boolean")
    return force


async def _hooks_post(state: State, req: Request) -> Any:
    raw = str((req.view_args or {}).get("type", ""))
    try:
        hook = HookType(raw)
    except ValueError:
        hook = None
    if hook is None or hook not in REMOTE_HOOKS:
        raise BadRequestError(f"No valid hook found for the given type {raw!r}")
    data = await req.get_data(as_text=False)
    body = await read_json_object(req) if data else {}
    runner = state.hook_runner
    if hook in (HookType.PRE_REMOVE, HookType.POST_REMOVE):
        await runner.run(hook, state, _force(body))
    elif hook is HookType.ON_NEW_MEMBER:
        await runner.run(hook, state, parse_member_local(body.get("new_member")))
    else:
        from .._state import DaemonConfig

        try:
            config = DaemonConfig.from_dict(body)
        except ValueError as exc:
            raise BadRequestError(f"Invalid daemon config: {exc}") from exc
        await runner.run(hook, state, config)
    return {}


async def _database_patch(state: State, req: Request) -> Any:
    state.control.notify_upgrade()
    return {}


async def _cluster_reset(state: State, req: Request) -> Any:
    name = validate_name((req.view_args or {}).get("name"))
    if name != state.name:
        raise BadRequestError(f"Reset target {name!r} is not this member ({state.name})")
    force = req.args.get("force", "") in ("1", "true")
    await state.control.reset(force=force)
    return {}


def internal_resources() -> Resources:
    return Resources(
        "core/internal",
        [
            Endpoint(
                "sql", name="sql", get=EndpointAction(_sql_get), post=EndpointAction(_sql_post)
            ),
            Endpoint(
                "truststore",
                name="truststore",
                post=EndpointAction(_truststore_post),
                allowed_before_init=True,
            ),
            Endpoint(
                "truststore/{name}",
                name="truststore/name",
                delete=EndpointAction(_truststore_delete),
                allowed_before_init=True,
            ),
            Endpoint(
                "hooks/{type}",
                name="hooks",
                post=EndpointAction(_hooks_post, proxy_target=True),
            ),
            Endpoint(
                "database",
                name="database",
                patch=EndpointAction(_database_patch),
                allowed_before_init=True,
            ),
            Endpoint(
                "cluster/{name}",
                name="cluster/reset",
                put=EndpointAction(_cluster_reset),
            ),
        ],
    )
