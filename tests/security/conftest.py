"""Fixtures of the security tests: the member fixtures of ``tests/member`` plus callers.

A *caller* is one way of reaching a listener (unix socket, a trusted certificate, an unknown
one, none, an expired truststore certificate, a wrong ``Host``); :func:`call_as` sends one
request as that caller.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

import pytest
from member.conftest import Member, call, stranger_pair

from microtrio._certs import CertKeyPair, generate_cert_key_pair

__all__ = ["Caller", "call_as", "expired_pair", "stranger_pair"]


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


async def call_as(
    caller: Caller,
    member: Member,
    method: str,
    path: str,
    *,
    address: str | None = None,
    pinned: bytes | None = None,
    trusted: CertKeyPair,
    unknown: CertKeyPair,
    expired: CertKeyPair,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One request to ``member`` as ``caller`` (TLS ones at ``address``, default the core
    listener, whose certificate is ``pinned``)."""
    if caller is Caller.UNIX:
        return await call(member, method, path, **kwargs)
    tls: dict[str, Any] = {"via": "tls", "address": address, "pinned": pinned}
    if caller is Caller.TRUSTED:
        tls["pair"] = trusted
    elif caller is Caller.UNKNOWN:
        tls["pair"] = unknown
    elif caller is Caller.NO_CERT:
        tls["no_cert"] = True
    elif caller is Caller.EXPIRED:
        tls["pair"] = expired
    else:
        tls["pair"] = trusted
        tls["host"] = WRONG_HOST
    return await call(member, method, path, **tls, **kwargs)
