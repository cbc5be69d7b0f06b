"""Shared fixtures of the member tests: in-process members and raw HTTP helpers.

* ``member``: a fresh member in the test's own nursery, bootstrapped as ``member1`` on
  ``127.0.0.1:0`` (the OS picks the port); cancelled cleanly at the end of the test.
* ``shared_member``: one bootstrapped member per test module, running in a background
  thread with its own trio loop; for tests that only read or that undo what they change.
* ``call(...)``: one raw request over the control socket or mutual TLS, returning
  ``(status, envelope)`` so tests can check the envelope itself.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import microtrio
from microtrio._certs import (
    CertKeyPair,
    client_ssl_context,
    generate_cert_key_pair,
    load_cert_key_pair,
    pinned_server_name,
)
from microtrio._client import Client

VERSION = "1.2.3"
CEILING = 30.0


@dataclass
class Member:
    """A running member as the tests see it."""

    state_dir: Path
    address: str
    app: microtrio.App
    hook_calls: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.state_dir / "control.socket"

    def unix_client(self) -> Client:
        return Client.unix(self.socket)

    def server_pair(self) -> CertKeyPair:
        return load_cert_key_pair(self.state_dir / "server.crt", self.state_dir / "server.key")

    def cluster_cert(self) -> bytes:
        return (self.state_dir / "cluster.crt").read_bytes()

    def tls_client(self, pair: CertKeyPair | None = None) -> Client:
        """A TLS client presenting ``pair`` (default: the member's own trusted server.crt)."""
        return Client.tls(self.address, cert=pair or self.server_pair(), pinned=self.cluster_cert())


async def call(
    member: Member,
    method: str,
    path: str,
    *,
    via: str = "unix",
    json_body: Any = None,
    content: bytes | None = None,
    pair: CertKeyPair | None = None,
    no_cert: bool = False,
    host: str | None = None,
    params: dict[str, str] | None = None,
    address: str | None = None,
    pinned: bytes | None = None,
) -> tuple[int, Any]:
    """One raw request; returns ``(HTTP status, decoded JSON body)``."""
    if json_body is not None:
        content = json.dumps(json_body).encode()
    headers = {"Content-Type": "application/json"} if content is not None else {}
    if host is not None:
        headers["Host"] = host
    extensions: dict[str, Any] = {}
    if via == "unix":
        transport = httpx.AsyncHTTPTransport(uds=str(member.socket))
        base = "http://control.socket"
    else:
        pinned = pinned or member.cluster_cert()
        cert = None if no_cert else (pair or member.server_pair())
        transport = httpx.AsyncHTTPTransport(verify=client_ssl_context(cert, pinned))
        base = f"https://{address or member.address}"
        extensions["sni_hostname"] = pinned_server_name(pinned)
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            response = await client.request(
                method,
                path,
                content=content,
                headers=headers,
                params=params,
                extensions=extensions,
            )
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body


def make_args(member_hooks: microtrio.Hooks | None = None, **kwargs: Any) -> microtrio.DaemonArgs:
    kwargs.setdefault("drain_timeout", 2.0)
    kwargs.setdefault("hook_timeout", 5.0)
    return microtrio.DaemonArgs(version=VERSION, hooks=member_hooks, **kwargs)


async def start_member(
    nursery: trio.Nursery,
    state_dir: Path,
    args: microtrio.DaemonArgs,
    *,
    bootstrap: bool = True,
    name: str = "member1",
) -> Member:
    app = microtrio.App(state_dir, args=args)
    await nursery.start(app.run)
    address = ""
    if bootstrap:
        await app.new_cluster(name, "127.0.0.1:0")
        address = (await app.status())["address"]
    return Member(state_dir, address, app)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def member(state_dir: Path) -> AsyncIterator[Member]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            found = await start_member(nursery, state_dir, make_args())
        yield found
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def shared_member() -> Iterator[Member]:
    """One bootstrapped member per module, served by a trio loop in a background thread."""
    tmp = tempfile.TemporaryDirectory(prefix="microtrio-member-")
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["stop"] = stop
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CEILING):
                    box["member"] = await start_member(
                        nursery, Path(tmp.name) / "state", make_args(api_extensions=["ext_a"])
                    )
            except BaseException as exc:
                box["error"] = exc
                raise
            finally:
                ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def runner() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the fixture below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=runner, name="shared-member", daemon=True)
    thread.start()
    ready.wait(CEILING)
    if "member" not in box:
        raise RuntimeError(f"shared member did not start: {box.get('error')!r}")
    try:
        yield box["member"]
    finally:
        if thread.is_alive():
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(CEILING)
        tmp.cleanup()
    if "error" in box:
        raise RuntimeError("the shared member failed") from box["error"]


@pytest.fixture(scope="session")
def stranger_pair() -> CertKeyPair:
    """A certificate no member trusts."""
    return generate_cert_key_pair("stranger")
