"""Join admission (reference 7.4): the leader's checks, the joiner's token check, a limiter.

Theory of operation
-------------------
A joiner decodes its token, then dials the token's join addresses (a dead one costs at
most ``timeout``) and keeps the first whose cluster certificate has the token's
fingerprint (:func:`find_cluster_certificate`). It sends its ``ClusterMember`` with the
token secret to ``POST /core/internal/cluster`` (:class:`JoinRequest`); any member
forwards that to the leader.

On the leader, :func:`admit_member` is ONE database transaction function: it finds the
token by comparing the candidate secret with every stored secret in constant time,
refuses an expired token ("Token expired"), a joiner certificate without a DNS SAN equal
to the token's name, a name other than the token's, and an address already in use; then
inserts the member row as ``PENDING`` and deletes the token. Because the database runs
transactions one after another (each sees the previous one), two joiners presenting the
same token race inside the writer and exactly one wins; the other finds no token.

:class:`AdmissionLimiter` is a token bucket per remote address on trio's clock: every
failed admission takes a token, and an address with an empty bucket is refused
(:class:`TooManyAttemptsError`, HTTP 429) before the database is touched, so secrets cannot
be guessed at speed.

:class:`TokenResponse` is the reply (appendix: ``cluster_cert``, ``cluster_key``,
``cluster_members``, ``trusted_member``, ``ClusterAdditionalCerts``).
"""

from __future__ import annotations

import datetime
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

import trio

from .._certs import dns_names, fingerprint
from .._db._extensions import decode_extensions
from .._errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    MicrotrioError,
    NotFoundError,
    RemoteError,
    TimeoutError_,
    TooManyAttemptsError,
    UnavailableError,
    ValidationError,
)
from .._replication import node_id_for
from ..raft import Role
from ._members import PENDING, insert_member, parse_time
from ._names import validate_address, validate_name
from ._tokens import JoinToken, secrets_equal
from ._truststore import TrustedMember

if TYPE_CHECKING:
    import apsw

    from .._db import Database
    from ._heartbeat import ClientFactory
    from ._roles import RaftMembership
    from ._truststore import Truststore

__all__ = [
    "AdmissionLimiter",
    "AdmittedMember",
    "JoinRequest",
    "KeyPairEntry",
    "TokenResponse",
    "TooManyAttemptsError",
    "Admission",
    "admit_member",
    "check_extensions",
    "AnnounceResult",
    "announce_join",
    "find_cluster_certificate",
    "undo_admission",
]

logger = logging.getLogger("microtrio.cluster")


def _str(data: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValidationError(f"Join request: {key!r} must be a string")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"Join request: {key!r} must be a non-negative integer")
    return value


@final
@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The body of ``POST /core/internal/cluster``: the joiner's ``ClusterMember`` with the
    token secret in ``secret``."""

    name: str
    address: str
    certificate: str
    schema_internal: int
    schema_external: int
    extensions: tuple[str, ...]
    secret: str

    @classmethod
    def from_dict(cls, data: object) -> JoinRequest:
        """Validate the wire shape; ValidationError names what is wrong."""
        if not isinstance(data, dict):
            raise ValidationError("Join request must be a JSON object")
        secret = _str(data, "secret", default="")
        if not secret:
            raise ValidationError("Join request: missing token secret")
        return cls(
            name=validate_name(data.get("name")),
            address=validate_address(data.get("address")),
            certificate=_str(data, "certificate"),
            schema_internal=_int(data, "schema_internal_version"),
            schema_external=_int(data, "schema_external_version"),
            extensions=tuple(decode_extensions(data.get("extensions"))),
            secret=secret,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "certificate": self.certificate,
            "role": PENDING,
            "schema_internal_version": self.schema_internal,
            "schema_external_version": self.schema_external,
            "last_heartbeat": "0001-01-01T00:00:00Z",
            "status": "",
            "extensions": list(self.extensions),
            "secret": self.secret,
        }

    @property
    def trusted(self) -> TrustedMember:
        return TrustedMember(self.name, self.address, self.certificate)


@final
@dataclass(frozen=True, slots=True)
class AdmittedMember:
    """What :func:`admit_member` did: the member row (PENDING) and the token it used."""

    name: str
    address: str
    token_name: str
    token_secret: str
    token_expiry: str | None


def check_extensions(joiner: Sequence[str], leader: Sequence[str]) -> None:
    """API extensions must equal the leader's exactly (reference 6.5)."""
    if list(joiner) != list(leader):
        missing = [e for e in leader if e not in joiner]
        extra = [e for e in joiner if e not in leader]
        raise BadRequestError(
            "API extensions mismatch with the cluster: "
            f"missing {missing or 'none'}, unknown {extra or 'none'}"
            + ("" if missing or extra else " (order differs)")
        )


def _find_token(conn: apsw.Connection, candidate: str) -> tuple[str, str | None] | None:
    """(name, expiry) of the token whose secret equals ``candidate``; every stored secret
    is compared in constant time, without stopping at the first match."""
    found: tuple[str, str | None] | None = None
    for name, secret, expiry in conn.execute(
        "SELECT name, secret, expiry_date FROM core_token_records"
    ):
        if secrets_equal(str(secret), candidate) and found is None:
            found = (str(name), expiry)
    return found


def admit_member(
    conn: apsw.Connection,
    request: JoinRequest,
    *,
    now: datetime.datetime,
    extensions: Sequence[str],
) -> AdmittedMember:
    """The leader's admission, as one transaction function (``Database.transaction``).

    Raises NotFoundError (unknown token), ForbiddenError (expired token, certificate or
    name not matching the token), BadRequestError (extensions differ) or ConflictError
    (address or name already a member); nothing is written then.
    """
    check_extensions(request.extensions, extensions)
    token = _find_token(conn, request.secret)
    if token is None:
        raise NotFoundError("Join token not found")
    token_name, expiry_text = token
    expiry = parse_time(expiry_text)
    if expiry is not None and expiry <= now:
        raise ForbiddenError("Token expired")
    try:
        names = dns_names(request.certificate)
    except ValidationError as exc:
        raise ForbiddenError(f"Joiner certificate is invalid: {exc}") from exc
    if token_name not in names:
        raise ForbiddenError(
            f"Joiner certificate has no DNS name matching the token name {token_name!r}"
        )
    if request.name != token_name:
        raise ForbiddenError(f"Join token was issued for {token_name!r}, not {request.name!r}")
    used = conn.execute(
        "SELECT name FROM core_cluster_members WHERE address = ?", (request.address,)
    ).get
    if used is not None:
        raise ConflictError(f"Address {request.address} is already used by member {used!r}")
    insert_member(
        conn,
        name=request.name,
        address=request.address,
        certificate=request.certificate,
        schema_internal=request.schema_internal,
        schema_external=request.schema_external,
        extensions=request.extensions,
        role=PENDING,
    )
    conn.execute("DELETE FROM core_token_records WHERE name = ?", (token_name,))
    return AdmittedMember(
        name=request.name,
        address=request.address,
        token_name=token_name,
        token_secret=request.secret,
        token_expiry=expiry_text,
    )


def undo_admission(conn: apsw.Connection, admitted: AdmittedMember) -> None:
    """Roll an admission back (transaction function): delete the PENDING row and give the
    token back, so the joiner may retry."""
    conn.execute(
        "DELETE FROM core_cluster_members WHERE name = ? AND address = ? AND role = ?",
        (admitted.name, admitted.address, PENDING),
    )
    conn.execute(
        "INSERT OR IGNORE INTO core_token_records (name, secret, expiry_date) VALUES (?, ?, ?)",
        (admitted.token_name, admitted.token_secret, admitted.token_expiry),
    )


# -- the reply -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class KeyPairEntry:
    """``KeyPair`` wire shape: ``cert``, ``key``, ``ca`` (PEM text; ca may be empty)."""

    cert: str
    key: str
    ca: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}


@final
@dataclass(frozen=True, slots=True)
class TokenResponse:
    """The admission reply (reference appendix ``TokenResponse``)."""

    cluster_cert: str
    cluster_key: str
    cluster_members: tuple[TrustedMember, ...]
    trusted_member: TrustedMember
    additional_certs: Mapping[str, KeyPairEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_cert": self.cluster_cert,
            "cluster_key": self.cluster_key,
            "cluster_members": [m.to_dict() for m in self.cluster_members],
            "trusted_member": self.trusted_member.to_dict(),
            "ClusterAdditionalCerts": {
                k: v.to_dict() for k, v in sorted(self.additional_certs.items())
            },
        }

    @classmethod
    def from_dict(cls, data: object) -> TokenResponse:
        """Validate the reply on the joiner; ValidationError if the shape is wrong."""
        if not isinstance(data, dict):
            raise ValidationError("Token response must be a JSON object")
        members = data.get("cluster_members")
        if not isinstance(members, list):
            raise ValidationError("Token response: 'cluster_members' must be a list")
        extra = data.get("ClusterAdditionalCerts") or {}
        if not isinstance(extra, dict):
            raise ValidationError("Token response: 'ClusterAdditionalCerts' must be a mapping")
        additional: dict[str, KeyPairEntry] = {}
        for name, pair in extra.items():
            if not isinstance(pair, dict):
                raise ValidationError(f"Token response: key pair {name!r} must be a mapping")
            additional[str(name)] = KeyPairEntry(
                cert=_str(pair, "cert"), key=_str(pair, "key"), ca=_str(pair, "ca", default="")
            )
        return cls(
            cluster_cert=_str(data, "cluster_cert"),
            cluster_key=_str(data, "cluster_key"),
            cluster_members=tuple(TrustedMember.from_dict(m) for m in members),
            trusted_member=TrustedMember.from_dict(data.get("trusted_member")),
            additional_certs=additional,
        )


# -- the joiner's side -----------------------------------------------------------------


async def find_cluster_certificate(
    token: JoinToken,
    *,
    fetch: Callable[[str], Awaitable[bytes]],
    timeout: float = 5.0,  # noqa: ASYNC109 - per address, not for the whole call
) -> tuple[str, bytes]:
    """Dial the token's join addresses in order; return ``(address, certificate)`` of the
    first whose certificate matches the token's fingerprint.

    ``fetch(address)`` returns the certificate the address presents (the daemon passes
    :func:`microtrio._certs.fetch_remote_certificate`). A dead or slow address costs at
    most ``timeout`` seconds. ForbiddenError when an address answered with another
    certificate and none matched; UnavailableError when none answered.
    """
    mismatched: list[str] = []
    failures: list[str] = []
    for address in token.join_addresses:
        cert: bytes | None = None
        with trio.move_on_after(timeout):
            try:
                cert = await fetch(address)
            except (MicrotrioError, OSError) as exc:
                failures.append(f"{address}: {exc}")
                logger.info("join address %s failed: %s", address, exc)
                continue
        if cert is None:
            failures.append(f"{address}: no answer within {timeout:g}s")
            continue
        if fingerprint(cert) == token.fingerprint:
            return address, cert
        mismatched.append(address)
    if mismatched:
        raise ForbiddenError(
            "Cluster certificate fingerprint does not match the join token at "
            + ", ".join(mismatched)
        )
    raise UnavailableError("No join address answered: " + "; ".join(failures))


@final
@dataclass(frozen=True, slots=True)
class AnnounceResult:
    """``unreachable``: members that did not answer (their truststores converge through
    later heartbeats); ``hook_errors``: members whose OnNewMember failed (name -> error)."""

    unreachable: tuple[str, ...]
    hook_errors: Mapping[str, str]


async def announce_join(
    joiner: TrustedMember,
    others: Sequence[TrustedMember],
    client_factory: ClientFactory,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - per member
) -> AnnounceResult:
    """Tell every existing member about a joiner, concurrently (reference 7.4 steps 7-8).

    To each: ``POST /core/internal/truststore`` (trust it), ``PATCH /core/internal/database``
    (wake a member waiting for an upgrade) and ``POST /core/internal/hooks/on-new-member``.
    A dead member costs at most ``timeout`` and is only reported; a 503 from the hook (that
    member is still starting) is ignored. ``client_factory`` must build notification-mode
    clients, so that the receivers do not fan out again.
    """
    unreachable: list[str] = []
    hook_errors: dict[str, str] = {}
    local = joiner.to_dict()

    async def one(member: TrustedMember) -> None:
        with trio.move_on_after(timeout) as scope:
            client = client_factory(member.address)
            try:
                await client.query("POST", "/core/internal/truststore", local, timeout=timeout)
                await client.query("PATCH", "/core/internal/database", timeout=timeout)
                try:
                    await client.query("POST", "/core/internal/hooks/on-new-member",
                                       {"new_member": local}, timeout=timeout)
                except RemoteError as exc:
                    if exc.status != 503:
                        hook_errors[member.name] = str(exc)
            except (UnavailableError, TimeoutError_) as exc:
                logger.info("join announcement to %s failed: %s", member.name, exc)
                unreachable.append(member.name)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await client.aclose()
        if scope.cancelled_caught:
            unreachable.append(member.name)

    async with trio.open_nursery() as nursery:
        for member in others:
            if member.name != joiner.name:
                nursery.start_soon(one, member)
    return AnnounceResult(unreachable=tuple(sorted(unreachable)), hook_errors=hook_errors)


# -- the rate limiter ------------------------------------------------------------------


@final
class AdmissionLimiter:
    """A token bucket per remote address for failed admissions.

    Each address starts with ``burst`` tokens and regains ``rate`` tokens per second (on
    ``clock``, default ``trio.current_time``). :meth:`check` refuses an address with less
    than one token; :meth:`failed` takes one. At most ``max_addresses`` buckets are kept
    (the least recently used are forgotten, which only ever helps an address).
    """

    def __init__(
        self,
        *,
        rate: float = 0.2,
        burst: float = 5.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if rate <= 0 or burst < 1 or max_addresses < 1:
            raise ValueError("need rate > 0, burst >= 1, max_addresses >= 1")
        self.rate = rate
        self.burst = burst
        self._max = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, address: str) -> float:
        entry = self._buckets.get(address)
        if entry is None:
            return self.burst
        tokens, stamp = entry
        return min(self.burst, tokens + (self._clock() - stamp) * self.rate)

    def check(self, address: str) -> None:
        """TooManyAttemptsError when ``address`` has no admission attempt left."""
        if self._level(address) < 1.0:
            raise TooManyAttemptsError(
                f"Too many failed join attempts from {address}; try again later"
            )

    def failed(self, address: str) -> None:
        """Record one failed admission from ``address``."""
        level = max(0.0, self._level(address) - 1.0)
        self._buckets[address] = (level, self._clock())
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def tokens(self, address: str) -> float:
        """Attempts left for ``address`` now (for tests and statistics)."""
        return self._level(address)


# -- the leader's component ------------------------------------------------------------


@final
class Admission:
    """The leader's side of ``POST /core/internal/cluster`` with injected dependencies.

    ``credentials()`` gives the cluster certificate and key (PEM) and the additional
    listeners' key pairs; ``own_name`` is the leader's member name (its truststore entry is
    the ``trusted_member``). ``lock`` serialises Raft membership changes with the
    heartbeat's role changes (pass the same lock to both).
    """

    def __init__(
        self,
        *,
        own_name: str,
        db: Database,
        truststore: Truststore,
        membership: RaftMembership,
        extensions: Sequence[str],
        credentials: Callable[[], Awaitable[tuple[str, str, Mapping[str, KeyPairEntry]]]],
        wall_clock: Callable[[], datetime.datetime],
        limiter: AdmissionLimiter | None = None,
        lock: trio.Lock | None = None,
        node_id: Callable[[str], int] | None = None,
    ) -> None:
        self.own_name = own_name
        self._db = db
        self._truststore = truststore
        self._membership = membership
        self._extensions = tuple(extensions)
        self._credentials = credentials
        self._wall_clock = wall_clock
        self.limiter = limiter if limiter is not None else AdmissionLimiter()
        self.lock = lock if lock is not None else trio.Lock()
        self._node_id = node_id if node_id is not None else node_id_for

    async def admit(self, request: JoinRequest, *, remote: str) -> TokenResponse:
        """Admit the joiner or raise; a failure leaves no row, truststore entry or Raft
        member behind (the token is given back when a later step failed)."""
        self.limiter.check(remote)
        try:
            if self._truststore.by_address(request.address) is not None:
                raise ConflictError(f"Address {request.address} is already in the truststore")
            now = self._wall_clock()
            admitted = await self._db.transaction(
                lambda conn: admit_member(conn, request, now=now, extensions=self._extensions)
            )
        except (BadRequestError, ForbiddenError, NotFoundError, ConflictError):
            self.limiter.failed(remote)
            raise
        logger.info("%s: admitted %s (%s) as PENDING", self.own_name, request.name,
                    request.address)
        try:
            await trio.to_thread.run_sync(self._truststore.add, request.trusted)
            async with self.lock:
                await self._membership.add_member(
                    self._node_id(request.name), request.address, Role.STANDBY
                )
            cert, key, additional = await self._credentials()
            members = tuple(self._truststore.members())
            own = self._truststore.by_name(self.own_name)
            if own is None:
                raise UnavailableError(f"{self.own_name} is not in its own truststore")
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                await self._undo(admitted)
            raise
        return TokenResponse(
            cluster_cert=cert,
            cluster_key=key,
            cluster_members=members,
            trusted_member=own,
            additional_certs=additional,
        )

    async def _undo(self, admitted: AdmittedMember) -> None:
        logger.warning("%s: rolling back the admission of %s", self.own_name, admitted.name)
        try:
            node_id = self._node_id(admitted.name)
            async with self.lock:
                if node_id in await self._membership.configuration():
                    await self._membership.remove_member(node_id)
        except MicrotrioError as exc:
            logger.warning("%s: cannot take %s out of Raft again: %s", self.own_name,
                           admitted.name, exc, exc_info=True)
        try:
            if self._truststore.by_name(admitted.name) is not None:
                await trio.to_thread.run_sync(self._truststore.remove, admitted.name)
            await self._db.transaction(lambda conn: undo_admission(conn, admitted))
        except MicrotrioError as exc:
            logger.warning("%s: rollback of %s incomplete: %s", self.own_name, admitted.name,
                           exc, exc_info=True)
