"""The OpenAPI documents a member of the example application serves (control socket and core
listener) validate against the OpenAPI 3.1 specification (``openapi-spec-validator``, which
the ``[test]`` extra installs: no silent skip), and list the application's endpoint. That
each documented path and method is served, and nothing else, is checked by
``tests/api_extra/test_api_openapi.py::test_served_document_matches_the_routes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from openapi_spec_validator import validate

from examples.microd import daemon_args
from microtrio.testing import open_cluster

CEILING = 90.0


async def _get(transport: httpx.AsyncBaseTransport, base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        response = await client.get("/core/1.0/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


async def test_served_documents_validate(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(
            1, tmp_path=tmp_path, args=daemon_args(drain_timeout=2.0)
        ) as cluster:
            member = cluster[0]
            socket = str(member.state_dir / "control.socket")
            local = await _get(httpx.AsyncHTTPTransport(uds=socket), "http://x")
            async with await member.client() as client:  # mutual TLS, trusted
                response = await client._http.get("/core/1.0/openapi.json")
            assert response.status_code == 200, response.text
            core = response.json()
    for document in (local, core):
        validate(document)  # raises on any violation of the specification
        assert "post" in document["paths"]["/1.0/extended"]
        assert {"/core/1.0", "/core/1.0/metrics", "/core/1.0/openapi.json"} <= set(
            document["paths"]
        )
    assert "/core/control" in local["paths"] and "/core/control" not in core["paths"]
    assert set(core["paths"]) <= set(local["paths"])
