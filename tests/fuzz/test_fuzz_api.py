"""Random JSON request bodies against a live member's control socket.

Bad input must get a 4xx error envelope and change nothing; a 500 means a handler let a
foreign exception (KeyError, TypeError, OverflowError, RecursionError, ...) reach the
router's catch-all. The member runs in a background thread with its own trio loop, the
Hypothesis properties are plain synchronous tests that talk to it with a blocking client
(30 s timeout per request: the I/O ceiling).

Endpoints that would destroy the member on a valid request (shutdown, self-reset, member
removal) are left out; everything that parses a body is in.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import microtrio

from ._fuzz import fuzz_settings

CEILING = 60.0

ENDPOINTS = [
    ("POST", "/core/control"),
    ("POST", "/core/control/tokens"),
    ("POST", "/core/internal/sql"),
    ("POST", "/core/internal/truststore"),
    ("POST", "/core/internal/hooks/pre-remove"),
    ("POST", "/core/internal/hooks/on-new-member"),
    ("POST", "/core/internal/hooks/nonsense"),
    ("PATCH", "/core/internal/database"),
    ("PUT", "/core/1.0/cluster/certificates/cluster"),
    ("PUT", "/core/1.0/cluster/certificates/web"),
    ("PUT", "/core/1.0/daemon/servers"),
    ("POST", "/core/internal/cluster"),
    ("POST", "/core/internal/heartbeat"),
]
KEYS = [
    "name", "address", "bootstrap", "join_token", "config", "expire_after", "query",
    "certificate", "cert", "key", "ca", "new_member", "force", "web", "servers", "secret",
]  # fmt: skip

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["member1", "127.0.0.1:1", "SELECT 1", "-----BEGIN CERTIFICATE-----"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=10,
)
raw_bodies = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"[" * 5000, b'{"a":' * 5000, b"\xff\xfe", b"1e999999", b"NaN"]),
)


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bootstrapped member serving on a control socket (thread-owned trio loop)."""
    state_dir = tmp_path_factory.mktemp("api") / "state"
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["stop"], box["token"] = stop, trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CEILING):
                    app = microtrio.App(
                        state_dir,
                        args=microtrio.DaemonArgs(version="1.0", drain_timeout=2.0),
                    )
                    await nursery.start(app.run)
                    await app.new_cluster("member1", "127.0.0.1:0")
            finally:
                started.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def runner() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=runner, name="fuzz-api-member", daemon=True)
    thread.start()
    assert started.wait(CEILING), "the member did not start in time"
    if "error" in box:
        raise box["error"]
    yield state_dir / "control.socket"
    trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
    thread.join(CEILING)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")


def request(socket: Path, method: str, path: str, content: bytes) -> tuple[int, Any]:
    transport = httpx.HTTPTransport(uds=str(socket))
    with httpx.Client(transport=transport, base_url="http://control.socket", timeout=30) as c:
        response = c.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
    return response.status_code, response.json()


def check(socket: Path, method: str, path: str, content: bytes) -> None:
    status, envelope = request(socket, method, path, content)
    assert isinstance(envelope, dict)
    if status == 200:
        assert envelope["type"] == "sync"
        return
    assert envelope["type"] == "error" and envelope["error_code"] == status
    assert status != 500, f"{method} {path} {content[:200]!r}: 500 {envelope['error']}"


@fuzz_settings(60)
@given(st.sampled_from(ENDPOINTS), json_values)
def test_random_json_bodies(socket_path: Path, endpoint: tuple[str, str], body: Any) -> None:
    check(socket_path, *endpoint, json.dumps(body).encode())


@fuzz_settings(25)
@given(st.sampled_from(ENDPOINTS), raw_bodies)
def test_random_raw_bodies(socket_path: Path, endpoint: tuple[str, str], body: bytes) -> None:
    check(socket_path, *endpoint, body)


@pytest.mark.parametrize(
    "body",
    [{"name": "member2", "expire_after": 2**63}, {"name": "member2", "expire_after": 10**30}],
    ids=["2^63", "1e30"],
)
def test_token_with_an_absurd_expiry_is_a_bad_request(socket_path: Path, body: Any) -> None:
    check(socket_path, "POST", "/core/control/tokens", json.dumps(body).encode())


def test_deeply_nested_json_is_a_bad_request(socket_path: Path) -> None:
    check(socket_path, "POST", "/core/control/tokens", b"[" * 50_000)


def test_member_still_healthy(socket_path: Path) -> None:
    status, envelope = request(socket_path, "GET", "/core/1.0", b"")
    assert status == 200 and envelope["metadata"]["ready"] is True
