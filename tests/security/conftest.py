"""Fixtures of the security tests: the member fixtures of ``tests/member`` plus callers.

A *caller* is one way of reaching a listener (unix socket, a trusted certificate, an unknown
one, none, an expired truststore certificate, a wrong ``Host``); :class:`CallerPool` sends
requests as that caller.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any, final

import httpx
import pytest
import trio
from member.conftest import CEILING, Member, stranger_pair

from microtrio._certs import (
    CertKeyPair,
    client_ssl_context,
    generate_cert_key_pair,
    pinned_server_name,
)

__all__ = ["Caller", "CallerPool", "expired_pair", "stranger_pair"]


class Caller(enum.Enum):
    UNIX = "unix"
    TRUSTED = "trusted member certificate"
    UNKNOWN = "unknown certificate"
    NO_CERT = "no certificate"
    EXPIRED = "expired truststore certificate"
    WRONG_HOST = "trusted certificate, wrong Host"


TLS_CALLERS: list[Caller] = [c for c in Caller if c is not Caller.UNIX]
WRONG_HOST = "127.0.0.1:1"


@pytest.fixture(scope="session")
def expired_pair() -> CertKeyPair:
    """A certificate whose ten-year validity ended about ten years ago."""
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=20 * 366)
    return generate_cert_key_pair("expired-peer", now=long_ago)


@final
class CallerPool:
    """One httpx client per (listener, caller), kept open while a test runs: each caller
    shakes hands once per connection instead of once per request."""

    def __init__(self, *, trusted: CertKeyPair, unknown: CertKeyPair, expired: CertKeyPair):
        self._pairs: dict[Caller, CertKeyPair | None] = {
            Caller.TRUSTED: trusted,
            Caller.UNKNOWN: unknown,
            Caller.NO_CERT: None,
            Caller.EXPIRED: expired,
            Caller.WRONG_HOST: trusted,
        }
        self._clients: dict[tuple[str, Caller], httpx.AsyncClient] = {}

    def _client(self, caller: Caller, member: Member, address: str, pinned: bytes) -> Any:
        key = (address, caller)
        client = self._clients.get(key)
        if client is None:
            if caller is Caller.UNIX:
                transport = httpx.AsyncHTTPTransport(uds=str(member.socket))
                base = "http://control.socket"
            else:
                context = client_ssl_context(self._pairs[caller], pinned)
                transport = httpx.AsyncHTTPTransport(verify=context)
                base = f"https://{address}"
            client = httpx.AsyncClient(transport=transport, base_url=base)
            self._clients[key] = client
        return client

    async def call(
        self,
        caller: Caller,
        member: Member,
        method: str,
        path: str,
        *,
        address: str | None = None,
        pinned: bytes | None = None,
    ) -> tuple[int, Any]:
        """One request to ``member`` as ``caller``: ``(HTTP status, decoded body)``. TLS
        callers go to ``address`` (default: the core listener), pinning ``pinned``
        (default: the cluster certificate)."""
        if caller is Caller.UNIX:
            address, pinned = str(member.socket), b""
        else:
            address = address or member.address
            pinned = pinned or member.cluster_cert()
        client = self._client(caller, member, address, pinned)
        headers = {"Host": WRONG_HOST} if caller is Caller.WRONG_HOST else {}
        extensions = {} if caller is Caller.UNIX else {"sni_hostname": pinned_server_name(pinned)}
        with trio.fail_after(CEILING):
            response = await client.request(method, path, headers=headers, extensions=extensions)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
