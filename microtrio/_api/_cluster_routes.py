"""The clustering endpoints on top of the member's :class:`~microtrio._membership.MemberCluster`.

* ``POST /core/internal/cluster`` (open: the token secret protects it): join admission on
  the Raft leader (:meth:`Admission.admit`); any other member forwards the request to the
  leader and relays its answer. Failed admissions are rate limited per remote address
  (HTTP 429).
* ``POST /core/internal/heartbeat`` (trusted members only): :func:`receive_heartbeat` with
  the authenticated caller; a cluster schema ahead of ours asks the schema-update trigger.
* ``GET /core/1.0/cluster``: the member rows with a status each (``member_statuses``:
  ``ONLINE`` / ``UNREACHABLE`` from a ``/core/1.0/ready`` probe, ``NEEDS UPGRADE`` /
  ``UPGRADING`` from the versions).
* ``DELETE /core/1.0/cluster/{name}[?force=1][&address=ip:port]``: :meth:`Removal.remove`
  on the leader; other members forward to the leader; when the leader removes itself it
  hands leadership over first and the request is forwarded to the new leader. ``address``
  must match the member's when it is known (400 otherwise); it also lets the leftovers of
  a member without a row (Raft, truststore) be removed.

* ``PUT /core/1.0/cluster/certificates/cluster``: the cluster-wide rotation of
  ``_cluster/_rotation.py`` (stage, switch, finish on every member through
  ``POST /core/internal/cluster-certificate``). An additional listener's certificate is
  replaced here first (so a bad one changes nothing) and then pushed to every other member
  as a notification. A notification, ``server`` (before init only), or a member whose
  cluster is not running: this member only.

The daemon mounts :func:`cluster_resources` before the core resources, so these routes take
precedence over the single-member ones. ``get_cluster()`` returns the member's current
:class:`MemberCluster` (None before init or after a reset: 503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import trio
from quart import Request

from .._certs import CertKeyPair, load_cert_key_pair
from .._cluster import _members as members
from .._cluster._admission import JoinRequest
from .._cluster._heartbeat import HeartbeatInfo, member_statuses, receive_heartbeat
from .._cluster._names import validate_address, validate_name
from .._cluster._rotation import (
    STEP_TIMEOUT,
    RotationStep,
    apply_step,
    load_links,
    rotate_cluster_certificate,
)
from .._errors import BadRequestError, MicrotrioError, NotFoundError, UnavailableError
from ._internal import is_notification
from ._listener import trusted_member_for_scope
from ._public import cert_name, certificates_put, member_json, read_key_pair
from ._resources import Endpoint, EndpointAction, Handler, Resources
from ._router import read_json_object
from ._state import State

if TYPE_CHECKING:
    from .._membership import MemberCluster

__all__ = ["cluster_resources"]

logger = logging.getLogger("microtrio.api")

#: Forwarded cluster operations (removal runs hooks on several members) get this long.
FORWARD_TIMEOUT = 120.0

FORWARDED_HEADER = "X-LXD-forwarded-address"

GetCluster = Callable[[], "MemberCluster | None"]


def _cluster(get: GetCluster) -> MemberCluster:
    cluster = get()
    if cluster is None:
        raise UnavailableError("This member's cluster membership is not running")
    return cluster


async def _forward(
    state: State,
    address: str,
    method: str,
    path: str,
    body: Any = None,
    params: Mapping[str, str] | None = None,
) -> Any:
    async with await state.remote_client(address) as client:
        return await client.query(method, path, body, params=params, timeout=FORWARD_TIMEOUT)


def _admit(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        cluster = _cluster(get)
        request = JoinRequest.from_dict(await read_json_object(req))
        remote = _remote(state, req)
        if not cluster.is_leader():
            leader = await cluster.wait_leader_address()
            if leader != state.address:
                logger.info("%s: forwarding the admission of %s to %s", state.name,
                            request.name, leader)
                async with await state.remote_client(leader) as client:
                    # The leader rate-limits the joiner's address, not ours.
                    return await client.notifier(remote).query(
                        "POST", "/core/internal/cluster", request.to_dict(),
                        timeout=FORWARD_TIMEOUT)
        admission = cluster.admission
        if admission is None:
            raise UnavailableError("Join admission is not running yet")
        response = await admission.admit(request, remote=remote)
        return response.to_dict()

    return handler


def _remote(state: State, req: Request) -> str:
    """The joiner's address for rate limiting: the peer's, or, when a trusted member
    forwarded the request, the address it names (``X-LXD-forwarded-address``)."""
    forwarded = req.headers.get(FORWARDED_HEADER, "")
    if forwarded:
        scope = cast("MutableMapping[str, Any]", req.scope)
        if trusted_member_for_scope(scope, state.truststore, now=state.now()) is not None:
            return forwarded
    return req.remote_addr or "unknown"


def _heartbeat(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        cluster = _cluster(get)
        info = HeartbeatInfo.from_dict(await read_json_object(req))
        scope = cast("MutableMapping[str, Any]", req.scope)
        caller = trusted_member_for_scope(scope, state.truststore, now=state.now())
        internal, external, _ = state.database.schema_versions()
        await receive_heartbeat(
            info,
            truststore=state.truststore,
            own_versions=(internal, external),
            caller=caller,
            on_schema_behind=cluster.trigger.request,
        )
        return {}

    return handler


async def _reachable(state: State, rows: list[members.MemberRow]) -> set[str]:
    """Names of the members that answer ``GET /core/1.0/ready`` within 5 s."""
    found: set[str] = set()

    async def probe(row: members.MemberRow) -> None:
        if row.name == state.name:
            if state.ready:
                found.add(row.name)
            return
        with trio.move_on_after(5):
            try:
                async with await state.remote_client(row.address) as client:
                    await client.query("GET", "/core/1.0/ready", timeout=5)
                found.add(row.name)
            except MicrotrioError:
                pass

    async with trio.open_nursery() as nursery:
        for row in rows:
            nursery.start_soon(probe, row)
    return found


def _list(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        cluster = _cluster(get)
        rows = await state.database.read(members.list_members)
        reachable = await _reachable(state, rows)
        statuses = member_statuses(rows, now=state.now(), interval=cluster.interval,
                                   own_name=state.name, reachable=reachable)
        return [member_json(row, str(statuses[row.name])) for row in rows]

    return handler


def _remove(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        cluster = _cluster(get)
        name = validate_name((req.view_args or {}).get("name"))
        force = req.args.get("force", "") in ("1", "true")
        raw_address = req.args.get("address", "")
        address = validate_address(raw_address) if raw_address else None
        params = {"force": "1"} if force else {}
        if address is not None:
            params["address"] = address
        path = f"/core/1.0/cluster/{quote(name)}"
        trusted = state.truststore.by_name(name)
        rows = await state.database.read(members.list_members)
        row = next((r for r in rows if r.name == name), None)
        if address is not None:
            for known in (trusted, row):
                if known is not None and known.address != address:
                    raise BadRequestError(
                        f"Member {name!r} has the address {known.address}, not {address}")
        elif trusted is None and row is None:
            raise NotFoundError(f"No remote exists with the given name {name!r}")
        if not cluster.is_leader():
            leader = await cluster.wait_leader_address()
            if leader != state.address:
                return await _forward(state, leader, "DELETE", path, None, params)
        removal = cluster.removal
        if removal is None:
            raise UnavailableError("Member removal is not running yet")
        async with cluster.round_lock:
            outcome = await removal.remove(name, force=force, address=address)
        if outcome.moved_to is not None:
            address = cluster.replication.driver.address_of(outcome.moved_to)
            if address is None:
                raise UnavailableError(f"New leader {outcome.moved_to} has no known address")
            logger.info("%s: leadership handed to %s; forwarding the removal of %s",
                        state.name, address, name)
            return await _forward(state, address, "DELETE", path, None, params)
        for warning in outcome.warnings:
            logger.warning("%s: removal of %s: %s", state.name, name, warning)
        return {}

    return handler


async def _apply_rotation_step(state: State, cluster: MemberCluster | None,
                               step: RotationStep) -> None:
    async def replace(cert: str, key: str) -> None:
        await state.control.replace_certificate("cluster", cert, key, None)

    async def refresh() -> None:
        if cluster is not None:
            await cluster.refresh_tls()

    await apply_step(state.state_dir, step, replace=replace, refresh=refresh)


async def _push_certificate(state: State, name: str, body: dict[str, str]) -> None:
    """``PUT .../certificates/<name>`` as a notification on every other member (each
    replaces only its own copy); the first failure is raised once all have answered."""
    rows = await state.database.read(members.list_members)
    failures: list[str] = []

    async def one(row: members.MemberRow) -> None:
        try:
            async with await state.remote_client(row.address) as client:
                await client.notifier(state.address).query(
                    "PUT", f"/core/1.0/cluster/certificates/{quote(name)}", body)
        except MicrotrioError as exc:
            failures.append(f"{row.name}: {exc}")

    async with trio.open_nursery() as nursery:
        for row in rows:
            if row.name != state.name:
                nursery.start_soon(one, row)
    if failures:
        raise UnavailableError(f"Certificate {name!r} not replaced everywhere: "
                               + "; ".join(sorted(failures)))


def _certificates(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        name = cert_name(req)
        cluster = get()
        if name == "server" or cluster is None or is_notification(req):
            result = await certificates_put(state, req)
            if name == "cluster" and cluster is not None:
                await cluster.refresh_tls()
            return result
        cert, key, ca = await read_key_pair(req)
        if name != "cluster":  # an additional listener's: here first (validated), then the rest
            await state.control.replace_certificate(name, cert, key, ca)
            await _push_certificate(state, name, {"cert": cert, "key": key, "ca": ca or ""})
            return {}
        pair = CertKeyPair(cert.encode(), key.encode(), ca.encode() if ca else None)

        async def send(address: str, step: RotationStep) -> None:
            async with await state.remote_client(address) as client:
                await client.notifier(state.address).query(
                    "POST", "/core/internal/cluster-certificate", step.to_dict(),
                    timeout=STEP_TIMEOUT)

        async def apply_local(step: RotationStep) -> None:
            await _apply_rotation_step(state, cluster, step)

        async with cluster.rotation_lock:
            rows = await state.database.read(members.list_members)
            peers = {row.name: row.address for row in rows if row.name != state.name}
            await rotate_cluster_certificate(pair, peers=peers, send=send,
                                             apply_local=apply_local, member=state.name,
                                             previous=cluster.cluster_pair)
        return {}

    return handler


def _rotation_step(get: GetCluster) -> Handler:
    async def handler(state: State, req: Request) -> Any:
        if not state.address:
            raise BadRequestError("This member is not initialised")
        step = RotationStep.from_dict(await read_json_object(req))
        cluster = get()
        if cluster is None:
            await _apply_rotation_step(state, None, step)
            return {}
        async with cluster.rotation_lock:
            await _apply_rotation_step(state, cluster, step)
        return {}

    return handler


async def _current_certificate(state: State, req: Request) -> Any:
    """The cluster pair and the rotation links, for a trusted member that missed a
    rotation (``follow_rotation``): it checks the links before it uses the pair."""
    pair = await trio.to_thread.run_sync(
        load_cert_key_pair, state.state_dir.cluster_crt, state.state_dir.cluster_key)
    links = await trio.to_thread.run_sync(load_links, state.state_dir)
    return {"cert": pair.cert.decode(), "key": pair.key.decode(),
            "chain": [link.to_dict() for link in links]}


def cluster_resources(get_cluster: GetCluster) -> list[Resources]:
    """The clustering endpoints (module docstring), for the control socket and core listener."""
    return [
        Resources(
            "core/internal",
            [
                Endpoint("cluster", name="cluster/admission",
                         post=EndpointAction(_admit(get_cluster), allow_untrusted=True)),
                Endpoint("heartbeat", name="heartbeat",
                         post=EndpointAction(_heartbeat(get_cluster))),
                Endpoint("cluster-certificate", name="cluster-certificate",
                         get=EndpointAction(_current_certificate),
                         post=EndpointAction(_rotation_step(get_cluster)),
                         allowed_before_init=True),
            ],
        ),
        Resources(
            "core/1.0",
            [
                Endpoint("cluster", name="cluster", get=EndpointAction(_list(get_cluster))),
                Endpoint("cluster/{name}", name="cluster/member",
                         delete=EndpointAction(_remove(get_cluster))),
                Endpoint("cluster/certificates/{name}", name="cluster/certificates",
                         put=EndpointAction(_certificates(get_cluster)),
                         allowed_before_init=True),
            ],
        ),
    ]

