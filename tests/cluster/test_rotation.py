"""The cluster certificate rotation's phases (``_cluster/_rotation.py``) on plain state
directories and with scripted peers: what each member pins after each phase, idempotence,
what happens when a member is down or fails half-way, and how a member that missed a
rotation follows it only along links signed by its own cluster key."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from microtrio._certs import (
    CertKeyPair,
    cluster_pin_bundle,
    fingerprint,
    generate_cert_key_pair,
    load_certificates,
    write_cert_key_pair,
)
from microtrio._cluster._rotation import (
    Phase,
    RotationLink,
    RotationStep,
    apply_step,
    follow_links,
    follow_rotation,
    load_links,
    rotate_cluster_certificate,
)
from microtrio._errors import BadRequestError, StateError, UnavailableError
from microtrio._state import StateDir

OLD = generate_cert_key_pair("old.example")
NEW = generate_cert_key_pair("new.example")


class Member:
    """A state directory with ``cluster.crt`` and what the member presents."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = StateDir(root / name)
        self.dir.create()
        write_cert_key_pair(self.dir.cluster_crt, self.dir.cluster_key, OLD)
        self.presented = OLD.fingerprint
        self.refreshes = 0

    def pins(self) -> set[str]:
        return {fingerprint(c) for c in load_certificates(cluster_pin_bundle(self.dir))}

    async def apply(self, step: RotationStep) -> None:
        async def replace(cert: str, key: str) -> None:
            write_cert_key_pair(self.dir.cluster_crt, self.dir.cluster_key,
                                CertKeyPair(cert.encode(), key.encode()))
            self.presented = fingerprint(cert)

        async def refresh() -> None:
            self.refreshes += 1

        await apply_step(self.dir, step, replace=replace, refresh=refresh)


def _steps(pair: CertKeyPair) -> list[RotationStep]:
    cert, key = pair.cert.decode(), pair.key.decode()
    return [RotationStep(Phase.STAGE, cert), RotationStep(Phase.SWITCH, cert, key),
            RotationStep(Phase.FINISH, cert)]


async def test_phases_pin_both_then_only_the_new(tmp_path: Path) -> None:
    member = Member(tmp_path, "m1")
    stage, switch, finish = _steps(NEW)
    with pytest.raises(StateError, match="does not present"):
        await member.apply(finish)  # finishing before switching is refused
    await member.apply(stage)
    assert member.pins() == {OLD.fingerprint, NEW.fingerprint}
    assert member.presented == OLD.fingerprint
    await member.apply(switch)
    assert member.pins() == {OLD.fingerprint, NEW.fingerprint}
    assert member.presented == NEW.fingerprint
    assert member.dir.cluster_crt.read_bytes() == NEW.cert
    await member.apply(finish)
    assert member.pins() == {NEW.fingerprint}
    # Every step again: nothing changes (a repeated request finishes a broken rotation).
    for step in (stage, switch, finish):
        await member.apply(step)
    assert member.pins() == {NEW.fingerprint}
    assert member.dir.cluster_crt.read_bytes() == NEW.cert
    assert member.refreshes == 6


def test_step_validation() -> None:
    cert, key = NEW.cert.decode(), NEW.key.decode()
    with pytest.raises(BadRequestError):
        RotationStep.from_dict({"phase": "explode", "cert": cert})
    with pytest.raises(BadRequestError):
        RotationStep.from_dict({"phase": "stage", "cert": "garbage"})
    with pytest.raises(BadRequestError):
        RotationStep.from_dict({"phase": "switch", "cert": cert, "key": OLD.key.decode()})
    with pytest.raises(BadRequestError):
        RotationStep.from_dict({"phase": "stage", "cert": cert + OLD.cert.decode()})
    step = RotationStep.from_dict({"phase": "switch", "cert": cert, "key": key})
    assert RotationStep.from_dict(step.to_dict()) == step
    assert "key" not in RotationStep(Phase.STAGE, cert).to_dict()


async def test_rotation_with_a_member_down(tmp_path: Path) -> None:
    local, peer, down = (Member(tmp_path, n) for n in ("m1", "m2", "m3"))
    seen: list[tuple[str, Phase]] = []

    async def send(address: str, step: RotationStep) -> None:
        seen.append((address, step.phase))
        if address == "m3":
            raise UnavailableError("connection refused")
        await peer.apply(step)

    with trio.fail_after(10):
        result = await rotate_cluster_certificate(
            NEW, peers={"member2": "m2", "member3": "m3"}, send=send, apply_local=local.apply,
            previous=OLD)
    assert result.switched == ["member2"] and result.unreachable == ["member3"]
    assert result.fingerprint == NEW.fingerprint
    assert [p for a, p in seen if a == "m3"] == [Phase.STAGE]  # left out afterwards
    for member in (local, peer):
        assert member.pins() == {NEW.fingerprint}
        assert member.presented == NEW.fingerprint
    assert down.pins() == {OLD.fingerprint}
    # The old key's link is kept by those reached, for the one that was not.
    (link,) = load_links(local.dir)
    assert load_links(peer.dir) == [link] and load_links(down.dir) == []
    assert link.verifies(OLD.cert) and link.cert == NEW.cert.decode()


async def test_failed_switch_keeps_both_pins_and_a_retry_finishes(tmp_path: Path) -> None:
    local, peer = Member(tmp_path, "m1"), Member(tmp_path, "m2")
    fail_switch = True

    async def send(address: str, step: RotationStep) -> None:
        if step.phase is Phase.SWITCH and fail_switch:
            raise StateError("disk full")
        await peer.apply(step)

    with trio.fail_after(10), pytest.raises(UnavailableError, match="send the same request"):
        await rotate_cluster_certificate(NEW, peers={"member2": "m2"}, send=send,
                                         apply_local=local.apply)
    # No one dropped the old certificate: every member still reaches every other.
    assert local.pins() == peer.pins() == {OLD.fingerprint, NEW.fingerprint}
    assert (local.presented, peer.presented) == (NEW.fingerprint, OLD.fingerprint)
    fail_switch = False
    with trio.fail_after(10):
        await rotate_cluster_certificate(NEW, peers={"member2": "m2"}, send=send,
                                         apply_local=local.apply)
    assert local.pins() == peer.pins() == {NEW.fingerprint}
    assert local.presented == peer.presented == NEW.fingerprint


async def test_bad_pair_changes_nothing(tmp_path: Path) -> None:
    local = Member(tmp_path, "m1")
    sent: list[RotationStep] = []

    async def send(address: str, step: RotationStep) -> None:
        sent.append(step)

    mismatched = CertKeyPair(NEW.cert, OLD.key)
    with trio.fail_after(10), pytest.raises(BadRequestError, match="does not match"):
        await rotate_cluster_certificate(mismatched, peers={"member2": "m2"}, send=send,
                                         apply_local=local.apply)
    assert sent == [] and local.pins() == {OLD.fingerprint}
    assert local.refreshes == 0


def test_links_lead_only_through_signatures() -> None:
    third = generate_cert_key_pair("third.example")
    first = RotationLink.make(OLD, NEW.cert.decode())
    second = RotationLink.make(NEW, third.cert.decode())
    assert first.verifies(OLD.cert) and not first.verifies(NEW.cert)
    assert follow_links(OLD.cert, [second, first], third.fingerprint)  # two rotations missed
    assert follow_links(OLD.cert, [], OLD.fingerprint)
    assert not follow_links(OLD.cert, [second], third.fingerprint)  # a gap
    # Signed by another key than the old one's: no way through.
    forged = RotationLink.make(CertKeyPair(OLD.cert, third.key), NEW.cert.decode())
    assert not forged.verifies(OLD.cert)
    assert not follow_links(OLD.cert, [forged], NEW.fingerprint)
    # A valid signature, but over another certificate than the one the link names.
    swapped = RotationLink(first.previous, third.cert.decode(), first.signature)
    assert not follow_links(OLD.cert, [swapped], third.fingerprint)
    assert RotationLink.from_dict(first.to_dict()) == first


async def test_follow_rotation(tmp_path: Path) -> None:
    """A member that missed a rotation adopts the certificate its peer presents only when
    its own cluster key vouched for it."""
    member = Member(tmp_path, "m3")
    link = RotationLink.make(OLD, NEW.cert.decode())
    other = generate_cert_key_pair("attacker.example")
    presented: dict[str, CertKeyPair] = {"good": NEW, "same": OLD, "bad": other}
    answers: dict[str, dict[str, object]] = {
        "good": {"cert": NEW.cert.decode(), "key": NEW.key.decode(), "chain": [link.to_dict()]},
        "bad": {"cert": other.cert.decode(), "key": other.key.decode(),
                "chain": [RotationLink.make(CertKeyPair(OLD.cert, other.key),
                                            other.cert.decode()).to_dict()]},
        "liar": {"cert": NEW.cert.decode(), "key": NEW.key.decode(),
                 "chain": [link.to_dict()]},
    }
    presented["liar"] = other  # presents one certificate, hands out another
    asked: list[str] = []

    async def fetch(address: str) -> bytes:
        return presented[address].der

    async def ask(address: str, der: bytes) -> object:
        asked.append(address)
        return answers[address]

    async def follow(peers: list[str]) -> bool:
        with trio.fail_after(10):
            return await follow_rotation(member.dir, peers, fetch=fetch, ask=ask,
                                         replace=replace, refresh=refresh)

    async def replace(cert: str, key: str) -> None:
        write_cert_key_pair(member.dir.cluster_crt, member.dir.cluster_key,
                            CertKeyPair(cert.encode(), key.encode()))

    async def refresh() -> None:
        member.refreshes += 1

    assert not await follow(["same", "bad", "liar"])
    assert asked == ["bad", "liar"]  # a peer presenting what it pins is not asked
    assert member.dir.cluster_crt.read_bytes() == OLD.cert and member.refreshes == 0
    assert await follow(["bad", "good"])
    assert member.dir.cluster_crt.read_bytes() == NEW.cert
    assert member.dir.cluster_key.read_bytes() == NEW.key
    assert member.pins() == {NEW.fingerprint} and member.refreshes == 1
    assert load_links(member.dir) == [link]
