"""The access matrix (issue 8): every route of every listener, every kind of caller.

The test ENUMERATES the routes of the apps a real daemon builds (each Quart app's
``url_map``; the catch-all rule is expanded into the router's table), so an endpoint added
anywhere without a row in :data:`MATRIX` fails here. Each row says where the route is
mounted and who may call it; the test then sends a real request as every caller that can
reach that listener and checks the answer:

* an ``open`` route answers every caller with something other than 403;
* a ``trusted`` route answers the unix socket and a trusted member certificate (with the
  right ``Host``) with something other than 403, and every other caller (unknown, no or
  expired certificate, wrong ``Host``) with a 403 error envelope, without running the
  handler (counted for the application routes).

Probes are harmless: path variables name nothing that exists and bodies are empty, so a
trusted request is refused by validation (400/404) or answered read-only. The only
destructive one, ``POST /core/control/shutdown``, is sent by the trusted caller last.
The rows mirror the table in ``docs/security.md``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from member.conftest import CEILING, Member, call, make_args, start_member
from quart import Request

import microtrio
import microtrio._daemon
from microtrio import Endpoint, EndpointAction, Resources, Server
from microtrio._api._router import Access, ListenerContext, ListenerKind, build_app
from microtrio._certs import CertKeyPair, cert_pem, client_ssl_context, pinned_server_name
from microtrio._replication._frames import (
    GOODBYE_FORBIDDEN,
    RAFT_ALPN,
    RecordReader,
    decode_goodbye,
)

from .conftest import TLS_CALLERS, Caller, CallerPool

OPEN, TRUSTED = Access.OPEN, Access.TRUSTED
U, N, P, X = ListenerKind.UNIX, ListenerKind.CORE, ListenerKind.PRE_INIT, ListenerKind.EXTRA
CORE_ALL = frozenset({U, N, P})
UN = frozenset({U, N})

#: ``(method, path pattern) -> (listeners it is mounted on, access)``. Rows for routes that
#: are not mounted yet are kept so that they are checked the moment they appear. (The Raft
#: channel is no HTTP route: see test_raft_channel_refuses_untrusted.)
MATRIX: dict[tuple[str, str], tuple[frozenset[ListenerKind], Access]] = {
    # /core/control: the control socket only
    ("POST", "/core/control"): (frozenset({U}), TRUSTED),
    ("POST", "/core/control/shutdown"): (frozenset({U}), TRUSTED),
    ("GET", "/core/control/tokens"): (frozenset({U}), TRUSTED),
    ("POST", "/core/control/tokens"): (frozenset({U}), TRUSTED),
    # /core/internal
    ("GET", "/core/internal/sql"): (UN, TRUSTED),
    ("POST", "/core/internal/sql"): (UN, TRUSTED),
    ("POST", "/core/internal/truststore"): (UN, TRUSTED),
    ("DELETE", "/core/internal/truststore/{name}"): (UN, TRUSTED),
    ("POST", "/core/internal/hooks/{type}"): (UN, TRUSTED),
    ("PATCH", "/core/internal/database"): (UN, TRUSTED),
    ("PUT", "/core/internal/cluster/{name}"): (UN, TRUSTED),
    ("POST", "/core/internal/cluster"): (UN, OPEN),  # join admission (token secret)
    ("POST", "/core/internal/heartbeat"): (UN, TRUSTED),  # unlike microcluster
    ("POST", "/core/internal/cluster-certificate"): (UN, TRUSTED),  # rotation steps
    ("GET", "/core/internal/cluster-certificate"): (UN, TRUSTED),  # missed rotations
    # /core/1.0
    ("GET", "/core/1.0"): (CORE_ALL, OPEN),
    ("GET", "/core/1.0/ready"): (CORE_ALL, TRUSTED),
    ("GET", "/core/1.0/cluster"): (CORE_ALL, TRUSTED),
    ("DELETE", "/core/1.0/cluster/{name}"): (CORE_ALL, TRUSTED),
    ("PUT", "/core/1.0/cluster/certificates/{name}"): (CORE_ALL, TRUSTED),
    ("GET", "/core/1.0/daemon/servers"): (CORE_ALL, TRUSTED),
    ("PUT", "/core/1.0/daemon/servers"): (CORE_ALL, TRUSTED),
    ("DELETE", "/core/1.0/tokens/{name}"): (CORE_ALL, TRUSTED),
    ("GET", "/core/1.0/metrics"): (UN, TRUSTED),
    ("GET", "/core/1.0/openapi.json"): (UN, TRUSTED),
    # this test's application: a core API server (also on the socket) and its own listener
    ("GET", "/1.0/hello"): (UN, OPEN),
    ("GET", "/1.0/items/{id}"): (UN, TRUSTED),
    ("PUT", "/1.0/items/{id}"): (UN, TRUSTED),
    ("GET", "/x/ping"): (frozenset({X}), TRUSTED),
    ("GET", "/x/open"): (frozenset({X}), OPEN),
}

#: Sent by the trusted caller only at the very end (it stops the member).
DESTRUCTIVE = {("POST", "/core/control/shutdown")}
_CATCH_ALL = {"root", "any"}
_VAR = re.compile(r"\{[^/]+\}")


@dataclass
class Recorded:
    """The apps a daemon built, with their listener contexts (in build order)."""

    apps: list[tuple[ListenerContext, Any]] = field(default_factory=list)

    def of(self, member: Member, kind: ListenerKind) -> list[tuple[ListenerContext, Any]]:
        daemon = member.app.daemon
        assert daemon is not None
        return [(c, a) for c, a in self.apps if c.state is daemon.state and c.kind is kind]


def enumerate_routes(ctx: ListenerContext, app: Any) -> set[tuple[str, str]]:
    """``(method, pattern)`` of every route of ``app``: the catch-all expanded through the
    router, any other rule (a websocket, an endpoint added straight to Quart) as it is."""
    found: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in _CATCH_ALL:
            found.update((method, pattern) for method, pattern, _ in ctx.router.access_table())
            continue
        if rule.endpoint == "static":
            continue
        pattern = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        methods = {"GET"} if rule.websocket else set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        found.update((m, pattern) for m in methods)
    return found


calls: dict[str, int] = {}


def counting(key: str) -> Callable[[microtrio.State, Request], Any]:
    async def handler(state: microtrio.State, request: Request) -> Any:
        calls[key] = calls.get(key, 0) + 1
        return {"route": key}

    return handler


def app_servers() -> dict[str, Server]:
    core = Server(
        core_api=True,
        serve_unix=True,
        resources=[
            Resources(
                "1.0",
                [
                    Endpoint("hello", get=EndpointAction(counting("hello"), allow_untrusted=True)),
                    Endpoint(
                        "items/{id}",
                        get=EndpointAction(counting("items-get")),
                        put=EndpointAction(counting("items-put")),
                    ),
                ],
            )
        ],
    )
    extra = Server(
        address="127.0.0.1:0",
        resources=[
            Resources(
                "x",
                [
                    Endpoint("ping", get=EndpointAction(counting("ping"))),
                    Endpoint("open", get=EndpointAction(counting("open"), allow_untrusted=True)),
                ],
            )
        ],
    )
    return {"app": core, "extra": extra}


@dataclass
class Cluster:
    member: Member  # bootstrapped, with the application servers
    fresh: Member  # not initialised, with a pre-init listener
    recorded: Recorded
    expired: CertKeyPair


@pytest.fixture
async def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expired_pair: CertKeyPair
) -> AsyncIterator[Cluster]:
    recorded = Recorded()

    def recording_build_app(ctx: ListenerContext) -> Any:
        app = build_app(ctx)
        recorded.apps.append((ctx, app))
        return app

    monkeypatch.setattr(microtrio._daemon, "build_app", recording_build_app)
    calls.clear()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            member = await start_member(nursery, tmp_path / "m1", make_args(servers=app_servers()))
            fresh = await start_member(
                nursery,
                tmp_path / "m2",
                make_args(pre_init_listen_address="127.0.0.1:0"),
                bootstrap=False,
                name="fresh",
            )
            # The expired certificate is IN the truststore: only its validity refuses it.
            entry = {
                "name": "expired-peer",
                "address": "127.0.0.1:9",
                "certificate": cert_pem(expired_pair.cert),
            }
            status, _ = await call(member, "POST", "/core/internal/truststore", json_body=entry)
            assert status == 200
        yield Cluster(member, fresh, recorded, expired_pair)
        nursery.cancel_scope.cancel()


def probe_path(pattern: str) -> str:
    return _VAR.sub("nosuch-name", pattern)


@dataclass
class Target:
    """One listener to probe: how to reach it and which callers can."""

    member: Member
    kind: ListenerKind
    address: str | None
    pinned: bytes | None
    callers: list[Caller]
    trusted_callers: set[Caller]


def targets(c: Cluster) -> list[Target]:
    m, f = c.member, c.fresh
    assert m.app.daemon is not None and f.app.daemon is not None
    cluster_cert = m.cluster_cert()
    unix = {Caller.UNIX}
    trusted = {Caller.TRUSTED}
    return [
        Target(m, U, None, None, [Caller.UNIX], unix),
        Target(m, N, m.address, cluster_cert, TLS_CALLERS, trusted),
        Target(m, X, m.app.daemon.listener_addresses["extra"], cluster_cert, TLS_CALLERS, trusted),
        Target(f, U, None, None, [Caller.UNIX], unix),
        # Before init the truststore is empty: no TLS caller is trusted there.
        Target(
            f,
            P,
            f.app.daemon.listener_addresses["pre-init"],
            f.server_pair().cert,
            [Caller.UNKNOWN, Caller.NO_CERT, Caller.TRUSTED],
            set(),
        ),
    ]


async def test_every_route_has_a_rule(cluster: Cluster) -> None:
    """The matrix covers every mounted route, on exactly the documented listeners, and the
    router's own decision agrees with it."""
    mounted: dict[tuple[str, str], set[ListenerKind]] = {}
    for target in targets(cluster):
        apps = cluster.recorded.of(target.member, target.kind)
        assert apps, f"no {target.kind.value} app was built"
        ctx, app = apps[-1]
        for route in enumerate_routes(ctx, app):
            mounted.setdefault(route, set()).add(target.kind)
        for method, pattern, access in ctx.router.access_table():
            row = MATRIX.get((method, pattern))
            if row is not None:
                assert access is row[1], f"router says {access} for {method} {pattern}"
    missing = sorted(route for route in mounted if route not in MATRIX)
    assert not missing, f"routes without a rule in the access matrix: {missing}"
    for route, kinds in mounted.items():
        documented = MATRIX[route][0]
        # A pre-init-only view cannot see the routes mounted only after init, and vice versa.
        assert kinds <= documented, f"{route} is mounted on {kinds}, documented {documented}"
        if P not in documented:
            assert P not in kinds


async def test_access_matrix(cluster: Cluster, stranger_pair: CertKeyPair) -> None:
    """Every caller gets the documented answer on every mounted route."""
    expected_calls: dict[str, int] = {}
    deferred: list[tuple[Target, str, str]] = []
    failures: list[str] = []
    pool = CallerPool(
        trusted=cluster.member.server_pair(), unknown=stranger_pair, expired=cluster.expired
    )
    limiter = trio.CapacityLimiter(8)

    async def probe(target: Target, caller: Caller, method: str, pattern: str) -> None:
        access = MATRIX[(method, pattern)][1]
        async with limiter:
            status, body = await pool.call(
                caller,
                target.member,
                method,
                probe_path(pattern),
                address=target.address,
                pinned=target.pinned,
            )
        allowed = access is OPEN or caller in target.trusted_callers
        where = f"{target.kind.value} {method} {pattern} as {caller.value}"
        shown = repr(body)[:200]
        if allowed and status == 403:
            failures.append(f"{where}: refused (403 {shown})")
        if not allowed and (
            status != 403 or not isinstance(body, dict) or body.get("type") != "error"
        ):
            failures.append(f"{where}: expected a 403 error envelope, got {status} {shown}")

    with trio.fail_after(CEILING * 4):
        async with trio.open_nursery() as nursery:
            for target in targets(cluster):
                ctx, app = cluster.recorded.of(target.member, target.kind)[-1]
                for method, pattern in sorted(enumerate_routes(ctx, app)):
                    for caller in target.callers:
                        allowed = (
                            MATRIX[(method, pattern)][1] is OPEN or caller in target.trusted_callers
                        )
                        if allowed and (method, pattern) in DESTRUCTIVE:
                            deferred.append((target, method, pattern))
                            continue
                        key = _app_key(method, pattern)
                        if key and allowed and not _before_init(target):
                            expected_calls[key] = expected_calls.get(key, 0) + 1
                        nursery.start_soon(probe, target, caller, method, pattern)
        await pool.aclose()
    assert not failures, "\n".join(failures)
    assert calls == expected_calls, "a refused caller reached an application handler"
    # Last: the trusted shutdown (once per member; the second member stops too).
    with trio.fail_after(CEILING):
        for target, method, pattern in deferred:
            status, body = await call(target.member, method, pattern)
            assert status == 200, body


def _app_key(method: str, pattern: str) -> str | None:
    return {
        ("GET", "/1.0/hello"): "hello",
        ("GET", "/1.0/items/{id}"): "items-get",
        ("PUT", "/1.0/items/{id}"): "items-put",
        ("GET", "/x/ping"): "ping",
        ("GET", "/x/open"): "open",
    }.get((method, pattern))


def _before_init(target: Target) -> bool:
    return target.member.address == ""


async def probe_raft_channel(address: str, pinned: bytes, pair: CertKeyPair | None) -> str:
    """Dial the Raft channel (ALPN ``RAFT_ALPN``): "welcome", "forbidden", or what else the
    listener answered first."""
    host, _, port = address.rpartition(":")
    tcp = await trio.open_tcp_stream(host, int(port))
    context = client_ssl_context(pair, pinned)
    context.set_alpn_protocols([RAFT_ALPN])
    stream = trio.SSLStream(tcp, context, server_hostname=pinned_server_name(pinned))
    try:
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == RAFT_ALPN
        reader = RecordReader(1024)
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return "closed"
            for record in reader.feed(data):
                if not record:
                    return "welcome"
                code, reason = decode_goodbye(record)
                return "forbidden" if code == GOODBYE_FORBIDDEN else f"goodbye {code}: {reason}"
    finally:
        await trio.aclose_forcefully(stream)


async def test_raft_channel_refuses_untrusted(cluster: Cluster, stranger_pair: CertKeyPair) -> None:
    """The Raft channel (ALPN ``RAFT_ALPN`` on the core listener, no HTTP) accepts trusted
    members only: a truststore certificate within its validity. It has no Host header, so
    the wrong-Host caller is just a trusted certificate there."""
    member = cluster.member
    pairs: dict[Caller, CertKeyPair | None] = {
        Caller.TRUSTED: member.server_pair(),
        Caller.UNKNOWN: stranger_pair,
        Caller.NO_CERT: None,
        Caller.EXPIRED: cluster.expired,
    }
    answers = {}
    with trio.fail_after(CEILING):
        for caller, pair in pairs.items():
            answers[caller] = await probe_raft_channel(member.address, member.cluster_cert(), pair)
    assert answers.pop(Caller.TRUSTED) == "welcome"
    assert answers == {caller: "forbidden" for caller in answers}, answers


def test_core_policy_overrides_allow_untrusted(caplog: pytest.LogCaptureFixture) -> None:
    """Under /core the policy table decides, not the endpoint's flag: a heartbeat endpoint
    declared open (as microcluster has it) still needs trust, and the override is logged."""
    from microtrio._api._router import CORE_POLICY, Router

    async def handler(state: microtrio.State, request: Request) -> Any:
        return {}

    router = Router(
        [
            Resources(
                "core/internal",
                [
                    Endpoint("heartbeat", post=EndpointAction(handler, allow_untrusted=True)),
                    Endpoint("newthing", get=EndpointAction(handler, allow_untrusted=True)),
                ],
            ),
            Resources("1.0", [Endpoint("app", get=EndpointAction(handler, allow_untrusted=True))]),
        ]
    )
    table = {(m, p): a for m, p, a in router.access_table()}
    assert table[("POST", "/core/internal/heartbeat")] is TRUSTED
    assert table[("GET", "/core/internal/newthing")] is TRUSTED  # unlisted: default deny
    assert table[("GET", "/1.0/app")] is OPEN  # application routes keep their flag
    assert "overridden by the core access policy" in caplog.text
    opened = sorted(route for route, access in CORE_POLICY.items() if access is OPEN)
    assert opened == [("GET", "/core/1.0"), ("POST", "/core/internal/cluster")]
