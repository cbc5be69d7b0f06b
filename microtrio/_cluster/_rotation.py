"""Replacing the cluster certificate on every member at runtime (reference 7.9, done safely).

Theory of operation
-------------------
Every member presents ``cluster.crt`` on its core listener and pins it when it dials
another member (REST clients, heartbeats, forwarding, and the Raft transport). Swapping it
member by member, as microcluster does, leaves a window in which members present different
certificates and pin only their own: the cluster splits. Here the member that receives
``PUT /core/1.0/cluster/certificates/cluster`` first validates the new pair (a bad one
changes nothing anywhere), then drives three phases, each on itself and on every other
member (``POST /core/internal/cluster-certificate`` with a :class:`RotationStep`):

1. ``stage``: write the new certificate as ``cluster.next.crt``. From then on the member
   pins the old AND the new certificate (:func:`~microtrio._certs.cluster_pin_bundle`)
   but still presents the old one.
2. ``switch``: keep the old certificate as ``cluster.prev.crt``, write the new pair to
   ``cluster.crt``/``cluster.key`` and swap the listeners live (new connections get the new
   certificate; established ones, e.g. Raft links, keep theirs). Everyone pins both, so
   every member reaches every other, whichever certificate it presents at that moment.
3. ``finish``: drop ``cluster.prev.crt``: the member pins only the new certificate. A
   client that still pins the old one is refused from then on.

A phase starts only when the previous one ended on every member reached by ``stage``.
If a member fails ``switch``, ``finish`` is not run anywhere (everyone keeps pinning both)
and the request fails: sending the same request again completes the rotation (each step is
idempotent). A member that stops half-way keeps its ``cluster.next.crt`` / ``cluster.prev.crt`` and
pins both again when it restarts.

A member that was down during ``stage`` is left out: it still presents and pins the old
certificate. So that it can follow by itself, the driving member signs a
:class:`RotationLink` with the OLD cluster key ("the certificate with fingerprint F is
replaced by this one"); every member keeps the recent links (``cluster.rotations.json``).
When the member that was down starts and finds no Raft leader (or a running member that
was unreachable during the rotation has had none for a while), :func:`follow_rotation`
asks its peers: a peer that presents a certificate it does not pin is asked, over TLS
pinned to exactly that certificate and presenting the member's own (trusted) server
certificate, for the current pair and the links (``GET
/core/internal/cluster-certificate``). The member adopts the pair only if the links lead
from ITS cluster certificate to the one the peer presented, each signed by the key of the
one before. That trusts nobody the member did not already trust: whoever holds the old
key could impersonate the cluster to it anyway. ``docs/operations.md`` says what an
operator does instead when the old key was compromised.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, final

import trio

from .._certs import (
    CertKeyPair,
    cluster_pin_bundle,
    cluster_pin_files,
    fingerprint,
    load_certificates,
    sign_with_key,
    validate_pair,
    verify_signature,
)
from .._errors import BadRequestError, MicrotrioError, StateError, UnavailableError
from .._state import atomic_write

if TYPE_CHECKING:
    from .._state import StateDir

__all__ = [
    "Phase",
    "RotationLink",
    "RotationResult",
    "RotationStep",
    "apply_step",
    "follow_rotation",
    "load_links",
    "rotate_cluster_certificate",
]

logger = logging.getLogger("microtrio.cluster")

#: How long one member gets to answer one phase.
STEP_TIMEOUT = 30.0
#: Rotation links each member keeps (a member down for longer follows by hand).
KEEP_LINKS = 16
LINKS_FILE = "cluster.rotations.json"
_LINK_CONTEXT = b"microtrio cluster certificate rotation\0"


class Phase(StrEnum):
    STAGE = "stage"
    SWITCH = "switch"
    FINISH = "finish"


@final
@dataclass(frozen=True, slots=True)
class RotationLink:
    """The key of the certificate with fingerprint ``previous`` vouches that ``cert`` (PEM)
    replaces it: ``signature`` (base64) over the two fingerprints."""

    previous: str
    cert: str
    signature: str

    @staticmethod
    def _message(previous: str, new: str) -> bytes:
        return _LINK_CONTEXT + previous.encode() + b"\0" + new.encode()

    @classmethod
    def make(cls, old: CertKeyPair, cert: str) -> RotationLink:
        signature = sign_with_key(old.key, cls._message(old.fingerprint, fingerprint(cert)))
        return cls(old.fingerprint, cert, base64.b64encode(signature).decode())

    def verifies(self, old_cert: bytes | str) -> bool:
        """True when ``old_cert`` is the certificate replaced and its key signed this."""
        if fingerprint(old_cert) != self.previous:
            return False
        try:
            signature = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        message = self._message(self.previous, fingerprint(self.cert))
        return verify_signature(old_cert, message, signature)

    def to_dict(self) -> dict[str, str]:
        return {"previous": self.previous, "cert": self.cert, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: object) -> RotationLink:
        if not isinstance(data, Mapping) or not all(
            isinstance(data.get(k), str) for k in ("previous", "cert", "signature")
        ):
            raise BadRequestError("A rotation link needs 'previous', 'cert' and 'signature'")
        link = cls(str(data["previous"]), str(data["cert"]), str(data["signature"]))
        load_certificates(link.cert)  # ValidationError (400) if it is no certificate
        return link


def follow_links(own: bytes | str, links: Sequence[RotationLink], target: str) -> bool:
    """True when ``links`` lead from certificate ``own`` to the fingerprint ``target``,
    each link signed by the key of the certificate before it."""
    current: bytes | str = own
    for _ in range(len(links) + 1):
        if fingerprint(current) == target:
            return True
        step = next((link for link in links if link.verifies(current)), None)
        if step is None:
            return False
        current = step.cert
    return False


def load_links(state_dir: StateDir) -> list[RotationLink]:
    """The rotation links this member keeps (blocking; [] when there are none)."""
    try:
        data = json.loads((state_dir.path / LINKS_FILE).read_text(encoding="utf-8"))
        return [RotationLink.from_dict(item) for item in data]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, MicrotrioError) as exc:
        logger.warning("ignoring unreadable %s: %s", LINKS_FILE, exc)
        return []


def _store_links(state_dir: StateDir, new: Sequence[RotationLink]) -> None:
    links = [link for link in load_links(state_dir) if link not in new] + list(new)
    text = json.dumps([link.to_dict() for link in links[-KEEP_LINKS:]], indent=1)
    atomic_write(state_dir.path / LINKS_FILE, text.encode(), 0o644)


@final
@dataclass(frozen=True, slots=True)
class RotationStep:
    """One phase for one member; ``key`` only travels with ``switch``, ``link`` (the old
    key vouching for the new certificate) with ``stage``."""

    phase: Phase
    cert: str
    key: str = ""
    link: RotationLink | None = None

    def __post_init__(self) -> None:
        certs = load_certificates(self.cert)  # ValidationError (400) if it is no certificate
        if len(certs) != 1:
            raise BadRequestError("Expected exactly one cluster certificate")
        if self.phase is Phase.SWITCH:
            validate_pair(CertKeyPair(self.cert.encode(), self.key.encode()))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    def to_dict(self) -> dict[str, str]:
        out: dict[str, Any] = {"phase": str(self.phase), "cert": self.cert}
        if self.phase is Phase.SWITCH:
            out["key"] = self.key
        if self.link is not None:
            out["link"] = self.link.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RotationStep:
        phase, cert, key = data.get("phase"), data.get("cert"), data.get("key", "")
        if phase not in {str(p) for p in Phase}:
            raise BadRequestError(f"Invalid rotation phase {phase!r}")
        if not isinstance(cert, str) or not isinstance(key, str):
            raise BadRequestError("'cert' and 'key' must be PEM strings")
        raw = data.get("link")
        link = None if raw is None else RotationLink.from_dict(raw)
        return cls(Phase(phase), cert, key, link)


@final
@dataclass(frozen=True, slots=True)
class RotationResult:
    """Who switched to the new certificate, and who was not reached (left on the old)."""

    fingerprint: str
    switched: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


# -- one member's side (blocking file work; run in a thread) ----------------------------


def _stage(state_dir: StateDir, cert: str, link: RotationLink | None) -> None:
    next_crt, _ = cluster_pin_files(state_dir)
    current = state_dir.cluster_crt.read_bytes()
    if fingerprint(current) != fingerprint(cert):
        atomic_write(next_crt, cert.encode(), 0o644)
    if link is not None and fingerprint(link.cert) == fingerprint(cert):
        if link.verifies(current):
            _store_links(state_dir, [link])
        else:
            logger.warning("rotation link to %s is not signed by this member's cluster key",
                           fingerprint(cert))


def _keep_previous(state_dir: StateDir, cert: str) -> bool:
    """Before a switch: keep the current certificate as ``cluster.prev.crt``; False when
    the new one is already in place (nothing to swap)."""
    current = state_dir.cluster_crt.read_bytes()
    if fingerprint(current) == fingerprint(cert):
        return False
    _, prev_crt = cluster_pin_files(state_dir)
    atomic_write(prev_crt, current, 0o644)
    return True


def _drop(state_dir: StateDir, *, previous: bool) -> None:
    next_crt, prev_crt = cluster_pin_files(state_dir)
    for path in (next_crt, prev_crt) if previous else (next_crt,):
        path.unlink(missing_ok=True)


def _finish(state_dir: StateDir, cert: str) -> None:
    if fingerprint(state_dir.cluster_crt.read_bytes()) != fingerprint(cert):
        raise StateError("This member does not present the new cluster certificate yet")
    _drop(state_dir, previous=True)


async def apply_step(
    state_dir: StateDir,
    step: RotationStep,
    *,
    replace: Callable[[str, str], Awaitable[None]],
    refresh: Callable[[], Awaitable[None]],
) -> None:
    """Run ``step`` on this member: ``replace(cert, key)`` writes the pair and swaps the
    listeners; ``refresh()`` makes the member's clients and Raft transport pin anew."""
    try:
        if step.phase is Phase.STAGE:
            await trio.to_thread.run_sync(_stage, state_dir, step.cert, step.link)
        elif step.phase is Phase.SWITCH:
            if await trio.to_thread.run_sync(_keep_previous, state_dir, step.cert):
                await replace(step.cert, step.key)
            await trio.to_thread.run_sync(lambda: _drop(state_dir, previous=False))
        else:
            await trio.to_thread.run_sync(_finish, state_dir, step.cert)
    except OSError as exc:
        raise StateError(f"Cannot {step.phase} the cluster certificate: {exc}") from exc
    await refresh()


# -- the member that drives the rotation ----------------------------------------------

Send = Callable[[str, RotationStep], Awaitable[None]]


async def _each(peers: Mapping[str, str], send: Send, step: RotationStep) -> dict[str, str]:
    """Send ``step`` to every peer concurrently; ``{name: why}`` of those that failed."""
    failed: dict[str, str] = {}

    async def one(name: str, address: str) -> None:
        with trio.move_on_after(STEP_TIMEOUT):
            try:
                await send(address, step)
            except MicrotrioError as exc:
                failed[name] = str(exc)
            return
        failed[name] = f"no answer within {STEP_TIMEOUT:g} s"

    async with trio.open_nursery() as nursery:
        for name, address in peers.items():
            nursery.start_soon(one, name, address)
    return failed


async def rotate_cluster_certificate(
    pair: CertKeyPair,
    *,
    peers: Mapping[str, str],
    send: Send,
    apply_local: Callable[[RotationStep], Awaitable[None]],
    member: str = "",
    previous: CertKeyPair | None = None,
) -> RotationResult:
    """Replace the cluster certificate on this member and on ``peers`` (``{name:
    address}``) in the three phases of the module docstring; ``previous`` (the current
    cluster pair) signs the :class:`RotationLink`."""
    await trio.to_thread.run_sync(validate_pair, pair)
    cert, key = pair.cert.decode(), pair.key.decode()
    link = None
    if previous is not None and previous.fingerprint != pair.fingerprint:
        link = await trio.to_thread.run_sync(RotationLink.make, previous, cert)
    stage = RotationStep(Phase.STAGE, cert, link=link)
    await apply_local(stage)
    down = await _each(peers, send, stage)
    for name, why in sorted(down.items()):
        logger.warning("%s: %s is left on the old cluster certificate (not reached: %s)",
                       member, name, why)
    reached = {n: a for n, a in peers.items() if n not in down}
    failed = await _each(reached, send, RotationStep(Phase.SWITCH, cert, key))
    await apply_local(RotationStep(Phase.SWITCH, cert, key))
    if failed:
        detail = "; ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
        raise UnavailableError(
            f"Cluster certificate rotation incomplete (every member still accepts the old "
            f"certificate; send the same request again to finish): {detail}")
    finish = RotationStep(Phase.FINISH, cert)
    await apply_local(finish)
    unfinished = await _each(reached, send, finish)
    for name, why in sorted(unfinished.items()):
        logger.warning("%s: %s still accepts the old cluster certificate: %s", member, name, why)
    logger.info("%s: cluster certificate replaced (fingerprint %s) on %s", member,
                stage.fingerprint, ", ".join(sorted([member, *reached])))
    return RotationResult(stage.fingerprint, sorted(reached), sorted(down))


# -- a member that was down during a rotation ------------------------------------------

Fetch = Callable[[str], Awaitable[bytes]]
Ask = Callable[[str, bytes], Awaitable[Any]]


def _parse_answer(answer: Any) -> tuple[str, str, list[RotationLink]]:
    if not isinstance(answer, Mapping):
        raise BadRequestError("Expected an object")
    cert, key, chain = answer.get("cert"), answer.get("key"), answer.get("chain", [])
    if not isinstance(cert, str) or not isinstance(key, str) or not isinstance(chain, list):
        raise BadRequestError("Expected 'cert', 'key' and 'chain'")
    return cert, key, [RotationLink.from_dict(item) for item in chain]


async def follow_rotation(
    state_dir: StateDir,
    peers: Sequence[str],
    *,
    fetch: Fetch,
    ask: Ask,
    replace: Callable[[str, str], Awaitable[None]],
    refresh: Callable[[], Awaitable[None]],
    member: str = "",
) -> bool:
    """Adopt the cluster certificate the peers present, if this member missed its rotation
    and the links prove it (module docstring). ``fetch(address)``: the DER a peer presents
    (unverified); ``ask(address, der)``: ``GET /core/internal/cluster-certificate`` pinned
    to ``der``. True when the certificate was replaced."""
    own = await trio.to_thread.run_sync(state_dir.cluster_crt.read_bytes)
    pins = {fingerprint(c) for c in load_certificates(
        await trio.to_thread.run_sync(cluster_pin_bundle, state_dir))}
    for address in peers:
        with trio.move_on_after(STEP_TIMEOUT):
            try:
                der = await fetch(address)
                if fingerprint(der) in pins:
                    continue
                cert, key, chain = _parse_answer(await ask(address, der))
                if fingerprint(cert) != fingerprint(der):
                    raise BadRequestError("it answered with another certificate")
                await trio.to_thread.run_sync(
                    validate_pair, CertKeyPair(cert.encode(), key.encode()))
                if not follow_links(own, chain, fingerprint(der)):
                    raise BadRequestError(
                        "its certificate is not vouched for by this member's cluster key")
            except MicrotrioError as exc:
                logger.warning("%s: not following the cluster certificate of %s: %s",
                               member, address, exc)
                continue
            await replace(cert, key)
            await trio.to_thread.run_sync(_store_links, state_dir, chain)
            await trio.to_thread.run_sync(lambda: _drop(state_dir, previous=True))
            await refresh()
            logger.warning("%s: followed a cluster certificate rotation missed while down "
                           "(now %s, from %s)", member, fingerprint(cert), address)
            return True
    return False
