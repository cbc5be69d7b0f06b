"""Initialising a member: bootstrap a new cluster or join one with a token (reference 7.2, 7.4).

Theory of operation
-------------------
:func:`initialise_member` runs ``POST /core/control`` for the daemon (an :class:`InitHost`):
``daemon.yaml`` (name, address), ``PreInit`` (a failure there only undoes daemon.yaml),
then the bootstrap or join steps. A failure after ``PreInit`` rolls back: a joiner the
leader had admitted asks the leader to remove it (``force``), then the member runs
``PreRemove(force)`` and resets itself in-process.

Joining (:func:`_join_steps`):

1. decode the token; make sure ``server.crt`` carries the member name;
2. start the core listener (still with ``server.crt``: the cluster certificate comes with
   the admission; port 0 is bound here, so the admission carries the real address);
3. find the join address whose certificate has the token's fingerprint
   (:func:`find_cluster_certificate`) and ask it for admission (``POST
   /core/internal/cluster``, pinned to that certificate); any member forwards to the leader,
   which admits the joiner as a Raft stand-by;
4. write ``cluster.crt``/``cluster.key`` and the additional listeners' key pairs, swap the
   core listener to the cluster certificate, trust every member of the reply;
5. open the replicated database as a stand-by that first catches up with the leader
   (the host's ``open_database(joining=True)``), write ``database/info.yaml``, start the
   additional listeners;
6. ``PreJoin``; tell every other member (trust, database wake-up, ``OnNewMember``;
   :func:`announce_join`); ``PostJoin``.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio
import yaml

from ._certs import (
    CertKeyPair,
    cert_pem,
    ensure_server_cert,
    fetch_remote_certificate,
    generate_cert_key_pair,
    write_cert_key_pair,
)
from ._client import Client
from ._cluster import _members as members
from ._cluster._admission import (
    JoinRequest,
    TokenResponse,
    announce_join,
    find_cluster_certificate,
)
from ._cluster._tokens import decode_token
from ._cluster._truststore import TrustedMember
from ._db import INTERNAL_SCHEMA_VERSION
from ._errors import MicrotrioError, StateError
from ._hooks import HookType
from ._replication import node_id_for
from ._state import DaemonConfig, ServerConfig, atomic_write

if TYPE_CHECKING:
    from ._api._state import ControlRequest, State
    from ._cluster._truststore import Truststore
    from ._db import Database
    from ._hooks import HookRunner
    from ._membership import MemberCluster
    from ._state import StateDir

__all__ = ["InitHost", "initialise_member", "write_info"]

logger = logging.getLogger("microtrio.daemon")

#: Bound for the admission call and for each join announcement.
JOIN_TIMEOUT = 30.0


class InitHost(Protocol):
    """What the init flows need of the daemon."""

    @property
    def state(self) -> State: ...

    @property
    def state_dir(self) -> StateDir: ...

    @property
    def truststore(self) -> Truststore: ...

    @property
    def hooks(self) -> HookRunner: ...

    @property
    def cluster(self) -> MemberCluster | None: ...

    @property
    def extension_names(self) -> list[str]: ...

    @property
    def external_schema_version(self) -> int: ...

    def set_identity(self, name: str, address: str, config: DaemonConfig | None) -> None: ...

    def extra_server_configs(self) -> dict[str, ServerConfig]: ...

    async def stop_listener(self, key: str) -> None: ...

    async def start_core_listener(self, address: str) -> str: ...

    async def swap_core_certificate(self, pair: CertKeyPair) -> None: ...

    async def open_database(self, *, bootstrap: bool, joining: bool = False) -> Database: ...

    async def start_extra_listeners(self) -> None: ...

    async def reset_member(self) -> None: ...


async def initialise_member(host: InitHost, request: ControlRequest) -> None:
    """Bootstrap or join (see the module docstring); raise on failure after rolling back."""
    if not request.bootstrap:
        decode_token(request.join_token)  # a malformed token changes nothing (400)
    config = DaemonConfig(request.name, request.address, host.extra_server_configs())
    dir_ = host.state_dir
    await trio.to_thread.run_sync(dir_.save_daemon_config, config)
    state = host.state
    previous = (state.name, state.address, state.daemon_config)
    host.set_identity(request.name, request.address, config)
    try:
        await host.hooks.run(HookType.PRE_INIT, state, request.bootstrap, dict(request.config))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink, dir_.daemon_yaml)
        host.set_identity(*previous)
        raise
    admitted: list[str] = []
    try:
        if request.bootstrap:
            await _bootstrap_steps(host, request)
        else:
            await _join_steps(host, request, admitted)
    except Exception as exc:
        logger.warning("%s: init failed, rolling back: %s", request.name, exc)
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            await _rollback(host, admitted)
        raise
    verb = "bootstrapped" if request.bootstrap else "joined the cluster"
    logger.info("%s: %s at %s", state.name, verb, state.address)


async def _bind_core(host: InitHost, request: ControlRequest) -> str:
    """Start the core listener; record the bound address (port 0) in daemon.yaml."""
    await host.stop_listener("pre-init")
    address = await host.start_core_listener(request.address)
    if address != request.address:
        config = DaemonConfig(request.name, address, host.extra_server_configs())
        host.set_identity(request.name, address, config)
        await trio.to_thread.run_sync(host.state_dir.save_daemon_config, config)
    return address


def write_info(state_dir: StateDir, name: str, address: str) -> None:
    """``database/info.yaml`` (this member's Raft id, address and role number)."""
    info = yaml.safe_dump({"ID": node_id_for(name), "Address": address, "Role": 0},
                          sort_keys=False)
    atomic_write(state_dir.database_info, info, 0o644)


async def _bootstrap_steps(host: InitHost, request: ControlRequest) -> None:
    name = request.name
    dir_ = host.state_dir
    server = await trio.to_thread.run_sync(ensure_server_cert, dir_, name)
    if not dir_.cluster_crt.exists():
        cluster = await trio.to_thread.run_sync(partial(generate_cert_key_pair, name))
        await trio.to_thread.run_sync(
            write_cert_key_pair, dir_.cluster_crt, dir_.cluster_key, cluster
        )
    address = await _bind_core(host, request)
    own = TrustedMember(name=name, address=address, certificate=cert_pem(server.cert))
    await trio.to_thread.run_sync(host.truststore.add, own)
    db = await host.open_database(bootstrap=True)
    internal, external, _ = db.schema_versions()

    def insert(conn: Any) -> None:
        members.insert_member(
            conn,
            name=name,
            address=address,
            certificate=own.certificate,
            schema_internal=internal,
            schema_external=external,
            extensions=host.extension_names,
            role="voter",
        )

    await db.transaction(insert)
    await trio.to_thread.run_sync(write_info, dir_, name, address)
    await host.start_extra_listeners()
    await host.hooks.run(HookType.POST_BOOTSTRAP, host.state, dict(request.config))


async def _request_admission(
    host: InitHost, request: ControlRequest, address: str, server: CertKeyPair
) -> tuple[str, TokenResponse]:
    token = decode_token(request.join_token)
    join_address, cluster_der = await find_cluster_certificate(
        token, fetch=fetch_remote_certificate
    )
    body = JoinRequest(
        name=request.name,
        address=address,
        certificate=cert_pem(server.cert),
        schema_internal=INTERNAL_SCHEMA_VERSION,
        schema_external=host.external_schema_version,
        extensions=tuple(host.extension_names),
        secret=token.secret,
    )
    pinned = cert_pem(cluster_der).encode()
    with trio.fail_after(JOIN_TIMEOUT):
        async with Client.tls(join_address, cert=server, pinned=pinned) as client:
            reply = await client.query("POST", "/core/internal/cluster", body.to_dict(),
                                       timeout=JOIN_TIMEOUT)
    return join_address, TokenResponse.from_dict(reply)


def _write_credentials(state_dir: StateDir, response: TokenResponse) -> CertKeyPair:
    pair = CertKeyPair(response.cluster_cert.encode(), response.cluster_key.encode())
    write_cert_key_pair(state_dir.cluster_crt, state_dir.cluster_key, pair)
    for name, entry in response.additional_certs.items():
        crt, key, ca = state_dir.certificate_files(name)
        extra = CertKeyPair(entry.cert.encode(), entry.key.encode(),
                            entry.ca.encode() if entry.ca else None)
        write_cert_key_pair(crt, key, extra, ca_path=ca if entry.ca else None)
    return pair


async def _join_steps(host: InitHost, request: ControlRequest, admitted: list[str]) -> None:
    name = request.name
    dir_ = host.state_dir
    server = await trio.to_thread.run_sync(ensure_server_cert, dir_, name)
    address = await _bind_core(host, request)
    leader, response = await _request_admission(host, request, address, server)
    admitted.append(response.trusted_member.address or leader)
    cluster_pair = await trio.to_thread.run_sync(_write_credentials, dir_, response)
    await host.swap_core_certificate(cluster_pair)
    own = TrustedMember(name=name, address=address, certificate=cert_pem(server.cert))
    for member in (*response.cluster_members, own):
        await trio.to_thread.run_sync(host.truststore.add, member)
    await host.open_database(bootstrap=False, joining=True)
    await trio.to_thread.run_sync(write_info, dir_, name, address)
    await host.start_extra_listeners()
    config = dict(request.config)
    await host.hooks.run(HookType.PRE_JOIN, host.state, config)
    cluster = host.cluster
    if cluster is None:
        raise StateError("the cluster membership did not start")
    await _trust_via_leader(response.trusted_member, own, server, cluster_pair)
    others = [m for m in host.truststore.members() if m.name != name]
    result = await announce_join(own, others, cluster.client_factory(), timeout=JOIN_TIMEOUT)
    if result.unreachable:
        logger.warning("%s: join not announced to %s (heartbeats will converge them)", name,
                       ", ".join(result.unreachable))
    if result.hook_errors:
        failed = "; ".join(f"{k}: {v}" for k, v in sorted(result.hook_errors.items()))
        raise MicrotrioError(f"OnNewMember failed on other members: {failed}")
    await host.hooks.run(HookType.POST_JOIN, host.state, config)


async def _trust_via_leader(
    leader: TrustedMember, own: TrustedMember, server: CertKeyPair, cluster: CertKeyPair
) -> None:
    """Only the admitting leader trusts a joiner yet: it pushes the joiner's entry to every
    other member (reference 7.4 step 7); a member it cannot reach converges by heartbeats."""
    try:
        with trio.fail_after(JOIN_TIMEOUT):
            async with Client.tls(leader.address, cert=server, pinned=cluster.cert) as client:
                await client.query("POST", "/core/internal/truststore", own.to_dict(),
                                   timeout=JOIN_TIMEOUT)
    except (MicrotrioError, trio.TooSlowError) as exc:
        logger.warning("%s: the leader could not push our truststore entry to every member: "
                       "%s", own.name, exc)


async def _rollback(host: InitHost, admitted: list[str]) -> None:
    state = host.state
    if admitted:  # the leader admitted us: ask it to take us out again (forced)
        await _leader_removal(host, admitted[0])
    try:
        await host.hooks.run(HookType.PRE_REMOVE, state, True)
    except MicrotrioError as exc:
        logger.warning("%s: PreRemove during rollback failed: %s", state.name, exc)
    await host.reset_member()


async def _leader_removal(host: InitHost, address: str) -> None:
    state = host.state
    cluster = host.cluster
    target = cluster.leader_address() if cluster is not None else None
    try:
        with trio.fail_after(JOIN_TIMEOUT):
            async with await state.remote_client(target or address) as client:
                await client.query("DELETE", f"/core/1.0/cluster/{state.name}",
                                   params={"force": "1"}, timeout=JOIN_TIMEOUT)
    except (MicrotrioError, trio.TooSlowError, OSError) as exc:
        logger.warning("%s: the leader could not remove this failed joiner: %s", state.name,
                       exc)


def _unlink(path: os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"Cannot remove {path}: {exc}") from exc

