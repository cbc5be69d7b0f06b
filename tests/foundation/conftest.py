"""Shared fixtures of the foundation tests: key pairs (made once) and a probe ASGI app."""

from __future__ import annotations

import json
from typing import Any

import pytest

from microtrio._api._envelope import error_response, sync_response
from microtrio._api._listener import client_certificates, listener_kind
from microtrio._certs import CertKeyPair, generate_cert_key_pair


@pytest.fixture(scope="session")
def server_pair() -> CertKeyPair:
    return generate_cert_key_pair("srv.example", common_name="user@srv.example")


@pytest.fixture(scope="session")
def client_pair() -> CertKeyPair:
    return generate_cert_key_pair("cli.example", common_name="user@cli.example")


@pytest.fixture(scope="session")
def other_pair() -> CertKeyPair:
    return generate_cert_key_pair("srv.example")


async def _send_envelope(send: Any, status: int, headers: Any, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def probe_app(scope: Any, receive: Any, send: Any) -> None:
    """Echo what the seam put into the scope: the listener kind and client certificates.

    HTTP: a sync envelope ``{kind, certs, path, query, method, headers, body}``; path
    ``/fail`` answers a 409 error envelope. Websocket: accepts and sends the same JSON.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    info = {
        "kind": listener_kind(scope),
        "certs": client_certificates(scope),
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
    }
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(info)})
        await send({"type": "websocket.close", "code": 1000})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    info["method"] = scope["method"]
    info["body"] = json.loads(body) if body else None
    if scope["path"] == "/fail":
        await _send_envelope(send, *error_response(409, "already exists"))
    elif scope["path"] == "/garbage":
        await _send_envelope(send, 502, [("Content-Type", "text/plain")], b"bad gateway")
    else:
        await _send_envelope(send, *sync_response(info))


@pytest.fixture
def probe() -> Any:
    """The probe ASGI app (see :func:`probe_app`)."""
    return probe_app
