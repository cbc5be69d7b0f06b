"""Shared test helpers: one in-process member of an example app (or of plain microtrio).

``run_member(nursery, tmp_path, args)`` starts a member in the test's nursery, bootstraps it
as ``member1`` on ``127.0.0.1:0`` and returns a :class:`Running` handle with raw HTTP
helpers over the control socket and over mutual TLS (the member's own, trusted,
``server.crt``; or no certificate at all).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

import microtrio
from microtrio._certs import client_ssl_context, load_cert_key_pair, pinned_server_name

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples` is a top-level package of the checkout
    sys.path.insert(0, str(REPO))

CEILING = 30.0


@dataclass
class Running:
    app: microtrio.App
    state_dir: Path
    address: str

    async def request(
        self,
        method: str,
        path: str,
        *,
        via: str = "unix",
        content: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        cert: bool = True,
    ) -> httpx.Response:
        """One raw request over ``unix`` or ``tls``; returns the httpx response."""
        extensions: dict[str, Any] = {}
        if via == "unix":
            transport = httpx.AsyncHTTPTransport(uds=str(self.state_dir / "control.socket"))
            base = "http://control.socket"
        else:
            pinned = (self.state_dir / "cluster.crt").read_bytes()
            pair = None
            if cert:
                pair = load_cert_key_pair(
                    self.state_dir / "server.crt", self.state_dir / "server.key"
                )
            transport = httpx.AsyncHTTPTransport(verify=client_ssl_context(pair, pinned))
            base = f"https://{self.address}"
            extensions["sni_hostname"] = pinned_server_name(pinned)
        with trio.fail_after(CEILING):
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return await client.request(
                    method,
                    path,
                    content=content,
                    json=json_body,
                    headers=dict(headers or {}),
                    extensions=extensions,
                )


async def run_member(
    nursery: trio.Nursery,
    tmp_path: Path,
    args: microtrio.DaemonArgs,
    *,
    config: Mapping[str, str] | None = None,
) -> Running:
    state_dir = tmp_path / "member1"
    app = microtrio.App(state_dir, args=args)
    with trio.fail_after(CEILING):
        await nursery.start(app.run)
        await app.new_cluster("member1", "127.0.0.1:0", config)
        address = str((await app.status())["address"])
    return Running(app, state_dir, address)
