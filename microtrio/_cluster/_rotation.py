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
idempotent). A member that was down during ``stage`` is left out; it still presents and
pins the old certificate, so it cannot rejoin by itself: the operator copies
``cluster.crt`` and ``cluster.key`` from any member into its state directory before
starting it (``docs/operations.md``). A member that stops half-way keeps its
``cluster.next.crt`` / ``cluster.prev.crt`` and pins both again when it restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, final

import trio

from .._certs import (
    CertKeyPair,
    cluster_pin_files,
    fingerprint,
    load_certificates,
    validate_pair,
)
from .._errors import BadRequestError, MicrotrioError, StateError, UnavailableError
from .._state import atomic_write

if TYPE_CHECKING:
    from .._state import StateDir

__all__ = [
    "Phase",
    "RotationResult",
    "RotationStep",
    "apply_step",
    "rotate_cluster_certificate",
]

logger = logging.getLogger("microtrio.cluster")

#: How long one member gets to answer one phase.
STEP_TIMEOUT = 30.0


class Phase(StrEnum):
    STAGE = "stage"
    SWITCH = "switch"
    FINISH = "finish"


@final
@dataclass(frozen=True, slots=True)
class RotationStep:
    """One phase for one member; ``key`` only travels with ``switch``."""

    phase: Phase
    cert: str
    key: str = ""

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
        out = {"phase": str(self.phase), "cert": self.cert}
        if self.phase is Phase.SWITCH:
            out["key"] = self.key
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RotationStep:
        phase, cert, key = data.get("phase"), data.get("cert"), data.get("key", "")
        if phase not in {str(p) for p in Phase}:
            raise BadRequestError(f"Invalid rotation phase {phase!r}")
        if not isinstance(cert, str) or not isinstance(key, str):
            raise BadRequestError("'cert' and 'key' must be PEM strings")
        return cls(Phase(phase), cert, key)


@final
@dataclass(frozen=True, slots=True)
class RotationResult:
    """Who switched to the new certificate, and who was not reached (left on the old)."""

    fingerprint: str
    switched: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


# -- one member's side (blocking file work; run in a thread) ----------------------------


def _stage(state_dir: StateDir, cert: str) -> None:
    next_crt, _ = cluster_pin_files(state_dir)
    if fingerprint(state_dir.cluster_crt.read_bytes()) != fingerprint(cert):
        atomic_write(next_crt, cert.encode(), 0o644)


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
            await trio.to_thread.run_sync(_stage, state_dir, step.cert)
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
) -> RotationResult:
    """Replace the cluster certificate on this member and on ``peers`` (``{name:
    address}``) in the three phases of the module docstring."""
    await trio.to_thread.run_sync(validate_pair, pair)
    cert, key = pair.cert.decode(), pair.key.decode()
    stage = RotationStep(Phase.STAGE, cert)
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
