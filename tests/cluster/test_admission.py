"""Join admission: the leader's transaction, the joiner's fingerprint check, the limiter."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from microtrio._certs import fingerprint
from microtrio._cluster import _members as members
from microtrio._cluster._admission import (
    Admission,
    AdmissionLimiter,
    JoinRequest,
    KeyPairEntry,
    TokenResponse,
    TooManyAttemptsError,
    admit_member,
    announce_join,
    find_cluster_certificate,
)
from microtrio._cluster._tokens import JoinToken, new_secret
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._db import Database, ExtensionRegistry
from microtrio._errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    MicrotrioError,
    NotFoundError,
    RemoteError,
    UnavailableError,
    ValidationError,
)
from microtrio._replication import node_id_for
from microtrio.raft import Role

from .conftest import NOW, FakeMembership, pair_for

EXTS = ExtensionRegistry().names


def request(name: str, address: str, secret: str, *, cert_name: str | None = None,
            extensions: list[str] | None = None) -> JoinRequest:
    return JoinRequest(
        name=name,
        address=address,
        certificate=pair_for(cert_name or name).cert.decode(),
        schema_internal=6,
        schema_external=0,
        extensions=tuple(EXTS if extensions is None else extensions),
        secret=secret,
    )


async def add_token(db: Database, name: str, *, expiry: datetime.datetime | None = None) -> str:
    secret = new_secret()
    await db.transaction(
        lambda conn: members.insert_token(conn, name=name, secret=secret, expiry=expiry, now=NOW)
    )
    return secret


async def state(db: Database) -> tuple[list[tuple[str, str]], list[str]]:
    rows = await db.read(members.list_members)
    tokens = await db.read(lambda conn: members.list_tokens(conn, NOW))
    return [(r.name, r.role) for r in rows], [t.name for t in tokens]


async def admit(db: Database, req: JoinRequest, now: datetime.datetime = NOW) -> Any:
    return await db.transaction(lambda conn: admit_member(conn, req, now=now, extensions=EXTS))


async def test_admit_inserts_pending_and_consumes_token(db: Database) -> None:
    secret = await add_token(db, "m2")
    with trio.fail_after(10):
        admitted = await admit(db, request("m2", "127.0.0.1:9002", secret))
    assert admitted.name == "m2" and admitted.token_name == "m2"
    assert await state(db) == ([("m2", "PENDING")], [])
    # single use: the same secret again finds nothing
    with pytest.raises(NotFoundError), trio.fail_after(10):
        await admit(db, request("m2", "127.0.0.1:9003", secret))


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("unknown", NotFoundError, "not found"),
        ("expired", ForbiddenError, "Token expired"),
        ("san", ForbiddenError, "DNS name"),
        ("name", ForbiddenError, "issued for"),
        ("extensions", BadRequestError, "extensions"),
        ("address", ConflictError, "already used"),
    ],
)
async def test_admission_refusals_change_nothing(
    db: Database, case: str, error: type[Exception], message: str
) -> None:
    expiry = NOW - datetime.timedelta(seconds=1) if case == "expired" else None
    secret = await add_token(db, "m2", expiry=expiry)
    await db.transaction(lambda conn: members.insert_member(
        conn, name="m1", address="127.0.0.1:9001", certificate=pair_for("m1").cert.decode(),
        schema_internal=6, schema_external=0, extensions=EXTS, role="voter"))
    req = {
        "unknown": request("m2", "127.0.0.1:9002", new_secret()),
        "expired": request("m2", "127.0.0.1:9002", secret),
        "san": request("m2", "127.0.0.1:9002", secret, cert_name="m3"),
        "name": request("m3", "127.0.0.1:9002", secret, cert_name="m2"),
        "extensions": request("m2", "127.0.0.1:9002", secret, extensions=EXTS + ["extra_x"]),
        "address": request("m2", "127.0.0.1:9001", secret),
    }[case]
    before = await db.read(lambda conn: list(conn.execute(
        "SELECT name, secret FROM core_token_records")))
    with pytest.raises(error, match=message), trio.fail_after(10):
        await admit(db, req)
    assert (await state(db))[0] == [("m1", "voter")]
    after = await db.read(lambda conn: list(conn.execute(
        "SELECT name, secret FROM core_token_records")))
    assert after == before


async def test_two_joiners_one_token_exactly_one_wins(db: Database) -> None:
    secret = await add_token(db, "m2")
    outcomes: list[str] = []

    async def joiner(port: int) -> None:
        try:
            await admit(db, request("m2", f"127.0.0.1:{port}", secret))
            outcomes.append(f"won:{port}")
        except NotFoundError:
            outcomes.append("lost")

    with trio.fail_after(20):
        for _ in range(5):  # several rounds: both in one batch, or in two
            async with trio.open_nursery() as nursery:
                nursery.start_soon(joiner, 9002)
                nursery.start_soon(joiner, 9003)
            rows = await db.read(members.list_members)
            assert len(rows) == 1 and rows[0].role == "PENDING"
            assert sorted(outcomes)[0] == "lost" and len(outcomes) == 2
            assert (await state(db))[1] == []
            await db.transaction(lambda conn: conn.execute("DELETE FROM core_cluster_members"))
            secret = await add_token(db, "m2")
            outcomes.clear()


def test_join_request_wire_shape() -> None:
    req = request("m2", "127.0.0.1:9002", "s3cret")
    again = JoinRequest.from_dict(req.to_dict())
    assert again == req
    single = req.to_dict() | {"extensions": "internal:runtime_extension_v1"}
    assert JoinRequest.from_dict(single).extensions == ("internal:runtime_extension_v1",)
    bad: object
    for bad in (
        [], req.to_dict() | {"secret": ""}, req.to_dict() | {"name": "_x"},
        req.to_dict() | {"address": "host:1"}, req.to_dict() | {"schema_internal_version": -1},
    ):
        with pytest.raises(ValidationError):
            JoinRequest.from_dict(bad)


def test_token_response_wire_shape() -> None:
    m1 = TrustedMember("m1", "127.0.0.1:9001", pair_for("m1").cert.decode())
    m2 = TrustedMember("m2", "127.0.0.1:9002", pair_for("m2").cert.decode())
    resp = TokenResponse(
        cluster_cert="CERT", cluster_key="KEY", cluster_members=(m1, m2), trusted_member=m1,
        additional_certs={"extended": KeyPairEntry("C", "K")},
    )
    wire = resp.to_dict()
    assert set(wire) == {"cluster_cert", "cluster_key", "cluster_members", "trusted_member",
                         "ClusterAdditionalCerts"}
    assert wire["ClusterAdditionalCerts"] == {"extended": {"cert": "C", "key": "K", "ca": ""}}
    assert TokenResponse.from_dict(wire) == resp
    with pytest.raises(ValidationError):
        TokenResponse.from_dict(wire | {"cluster_members": "x"})


# -- the joiner's fingerprint check ----------------------------------------------------


async def test_find_cluster_certificate_skips_dead_and_wrong(
    autojump_clock: trio.testing.MockClock,
) -> None:
    right, wrong = pair_for("cluster-a").cert, pair_for("cluster-b").cert
    token = JoinToken(new_secret(), fingerprint(right),
                      ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"))

    async def fetch(address: str) -> bytes:
        if address == "10.0.0.1:1":
            await trio.sleep_forever()
        if address == "10.0.0.2:1":
            raise UnavailableError("connection refused")
        return wrong if address == "10.0.0.3:1" else right

    start = trio.current_time()
    with trio.fail_after(60):
        address, cert = await find_cluster_certificate(token, fetch=fetch, timeout=5)
    assert (address, cert) == ("10.0.0.4:1", right)
    assert trio.current_time() - start == pytest.approx(5)  # the dead one cost the timeout


async def test_find_cluster_certificate_errors(autojump_clock: trio.testing.MockClock) -> None:
    right, wrong = pair_for("cluster-a").cert, pair_for("cluster-b").cert
    token = JoinToken(new_secret(), fingerprint(right), ("10.0.0.1:1", "10.0.0.2:1"))

    async def wrong_cert(address: str) -> bytes:
        return wrong

    async def dead(address: str) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(60):
        with pytest.raises(ForbiddenError, match="fingerprint"):
            await find_cluster_certificate(token, fetch=wrong_cert)
        with pytest.raises(UnavailableError, match="No join address answered"):
            await find_cluster_certificate(token, fetch=dead, timeout=1)


# -- the limiter ----------------------------------------------------------------------


def test_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = AdmissionLimiter(rate=0.5, burst=3, max_addresses=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("a")
        limiter.failed("a")
    with pytest.raises(TooManyAttemptsError) as info:
        limiter.check("a")
    assert info.value.status == 429
    limiter.check("b")  # other addresses are not affected
    now[0] += 2.0  # one token back
    limiter.check("a")
    limiter.failed("a")
    with pytest.raises(TooManyAttemptsError):
        limiter.check("a")
    now[0] += 100.0
    assert limiter.tokens("a") == 3  # capped at burst
    limiter.failed("b")
    limiter.failed("c")  # evicts the least recently used ("a")
    assert limiter.tokens("a") == 3 and limiter.tokens("b") == 2


# -- the leader's component -----------------------------------------------------------


def make_admission(db: Database, tmp_path: Path, fake: FakeMembership,
                   broken: list[bool] | None = None) -> tuple[Admission, Truststore]:
    store = Truststore(tmp_path / "truststore")
    store.add(TrustedMember("m1", "127.0.0.1:9001", pair_for("m1").cert.decode()))

    async def credentials() -> tuple[str, str, Mapping[str, KeyPairEntry]]:
        if broken:
            raise UnavailableError("cannot read cluster.key")
        return "CLUSTER-CERT", "CLUSTER-KEY", {}

    admission = Admission(
        own_name="m1", db=db, truststore=store, membership=fake, extensions=EXTS,
        credentials=credentials, wall_clock=lambda: NOW,
        limiter=AdmissionLimiter(rate=0.1, burst=2, clock=lambda: 0.0),
    )
    return admission, store


async def test_admission_component_success(db: Database, tmp_path: Path) -> None:
    fake = FakeMembership({1: Role.VOTER}, leader=1)
    admission, store = make_admission(db, tmp_path, fake)
    secret = await add_token(db, "m2")
    with trio.fail_after(10):
        resp = await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.1.1.1")
    assert [m.name for m in resp.cluster_members] == ["m1", "m2"]
    assert resp.trusted_member.name == "m1" and resp.cluster_key == "CLUSTER-KEY"
    assert fake.calls == [("add", node_id_for("m2"), Role.STANDBY)]
    assert store.by_name("m2") is not None
    assert await state(db) == ([("m2", "PENDING")], [])


async def test_admission_component_rolls_back(db: Database, tmp_path: Path) -> None:
    fake = FakeMembership({1: Role.VOTER}, leader=1)
    fake.fail = UnavailableError("raft is down")
    admission, store = make_admission(db, tmp_path, fake)
    secret = await add_token(db, "m2")
    with pytest.raises(UnavailableError), trio.fail_after(10):
        await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.1.1.1")
    assert store.by_name("m2") is None
    assert await state(db) == ([], ["m2"])  # no half-member; the token can be used again
    fake.fail = None
    with trio.fail_after(10):
        await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.1.1.1")
    assert (await state(db))[0] == [("m2", "PENDING")]


async def test_admission_rollback_takes_the_joiner_out_of_raft(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeMembership({1: Role.VOTER}, leader=1)
    admission, store = make_admission(db, tmp_path, fake, broken=[True])
    secret = await add_token(db, "m2")
    with pytest.raises(UnavailableError, match="cluster.key"), trio.fail_after(10):
        await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.1.1.1")
    assert fake.calls == [("add", node_id_for("m2"), Role.STANDBY),
                          ("remove", node_id_for("m2"), None)]
    assert fake.conf == {1: Role.VOTER} and store.by_name("m2") is None
    assert await state(db) == ([], ["m2"])


async def test_admission_component_limits_failures(db: Database, tmp_path: Path) -> None:
    admission, store = make_admission(db, tmp_path, FakeMembership({1: Role.VOTER}, 1))
    secret = await add_token(db, "m2")
    with trio.fail_after(10):
        for _ in range(2):
            with pytest.raises(NotFoundError):
                await admission.admit(request("m2", "127.0.0.1:9002", "bad"), remote="10.9.9.9")
        with pytest.raises(TooManyAttemptsError):  # even the right secret is refused now
            await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.9.9.9")
        with pytest.raises(ConflictError):  # address in the truststore already
            await admission.admit(request("m2", "127.0.0.1:9001", secret), remote="10.2.2.2")
        await admission.admit(request("m2", "127.0.0.1:9002", secret), remote="10.2.2.2")
    assert isinstance(TooManyAttemptsError("x"), MicrotrioError)


class AnnounceClient:
    def __init__(self, address: str, log: list[tuple[str, str, str]]) -> None:
        self.port = address.rsplit(":", 1)[1]
        self.log = log

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        if self.port == "2":
            await trio.sleep_forever()
        if self.port == "3":
            raise UnavailableError("Cannot connect")
        if "on-new-member" in path:
            if self.port == "4":
                raise RemoteError("Database is still starting", 503)
            if self.port == "5":
                raise RemoteError("hook exploded", 500)
            assert body == {"new_member": joiner_entry().to_dict()}
        self.log.append((self.port, method, path))
        return None

    async def aclose(self) -> None:
        pass


def joiner_entry() -> TrustedMember:
    return TrustedMember("m9", "10.0.0.9:9", pair_for("m9").cert.decode())


async def test_announce_join_tolerates_dead_members(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, str, str]] = []
    others = [TrustedMember(f"m{i}", f"10.0.0.{i}:{i}", pair_for(f"m{i}").cert.decode())
              for i in range(1, 6)] + [joiner_entry()]
    with trio.fail_after(60):
        start = trio.current_time()
        result = await announce_join(joiner_entry(), others,
                                     lambda a: AnnounceClient(a, log), timeout=5)
    assert trio.current_time() - start == pytest.approx(5)  # the dead one, once
    assert result.unreachable == ("m2", "m3")
    assert result.hook_errors == {"m5": "hook exploded"}  # the 503 of m4 is ignored
    assert [e for e in log if e[0] == "1"] == [
        ("1", "POST", "/core/internal/truststore"), ("1", "PATCH", "/core/internal/database"),
        ("1", "POST", "/core/internal/hooks/on-new-member")]
    assert not [e for e in log if e[0] == "9"]  # not announced to itself
