"""``GET /core/1.0/openapi.json``: a valid OpenAPI 3.1 document equal to the served routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _member_support import CEILING, run_member

import microtrio
from examples.kv import KV_SERVER, SCHEMA_UPDATES
from examples.microd.api import EXTENDED_SERVER
from microtrio._api._openapi import METHODS, build_openapi
from microtrio._api._public import public_resources
from microtrio._api._router import Router
from microtrio._certs import client_ssl_context, pinned_server_name

_VAR = re.compile(r"\{[^}]+\}")


def check_document(doc: dict[str, Any]) -> None:
    """The structural rules of OpenAPI 3.1 this generator must keep (no dependencies)."""
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    operation_ids: set[str] = set()
    schemes = set(doc["components"]["securitySchemes"])
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        variables = {v[1:-1] for v in _VAR.findall(path)}
        assert item, f"{path} has no operations"
        for method, op in item.items():
            assert method in METHODS
            assert op["operationId"] not in operation_ids
            operation_ids.add(op["operationId"])
            assert "200" in op["responses"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == variables, (path, method)
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    assert p["required"] is True
            for requirement in op["security"]:
                assert set(requirement) <= schemes
    text = repr(doc)
    for ref in re.findall(r"'\$ref': '#/components/(\w+)/(\w+)'", text):
        assert ref[1] in doc["components"][ref[0]], ref


def test_generator_on_a_router() -> None:
    router = Router([public_resources(), *KV_SERVER.resources])
    doc = build_openapi(router.routes(), version="9")
    check_document(doc)
    assert doc["info"]["version"] == "9"
    kv = doc["paths"]["/1.0/kv/{key}"]
    assert sorted(kv) == ["delete", "get", "put"]
    assert kv["get"]["summary"].startswith("The key's value")
    assert "application/octet-stream" in kv["get"]["responses"]["200"]["content"]
    assert kv["put"]["security"] == [{"mutualTLS": []}]
    assert doc["paths"]["/core/1.0"]["get"]["security"] == []


def _matches(pattern: str, path: str) -> bool:
    regex = (
        "^" + _VAR.sub("[^/]+", re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")) + "$"
    )
    return re.match(regex, path) is not None


async def _probe(client: httpx.AsyncClient, sni: str, path: str, method: str) -> int:
    """The status an untrusted caller gets; a 404 that the router gave (no such path,
    message "not found") is reported as 404, a handler's own 404 (no such member) as 410."""
    concrete = _VAR.sub("x", path)
    response = await client.request(method.upper(), concrete, extensions={"sni_hostname": sni})
    if response.status_code == 404 and response.json().get("error") != "not found":
        return 410
    return response.status_code


def _untrusted_client(member: Any) -> tuple[httpx.AsyncClient, str]:
    """One keep-alive TLS connection without a client certificate, and its SNI name."""
    pinned = (member.state_dir / "cluster.crt").read_bytes()
    transport = httpx.AsyncHTTPTransport(verify=client_ssl_context(None, pinned))
    client = httpx.AsyncClient(transport=transport, base_url=f"https://{member.address}")
    return client, pinned_server_name(pinned)


async def _check_routes(probe: httpx.AsyncClient, sni: str, paths: dict[str, Any]) -> None:
    for path, item in paths.items():
        for method in METHODS:
            status = await _probe(probe, sni, path, method)
            if method in item:
                assert status not in (404, 501), (method, path, status)
                if item[method]["security"]:
                    assert status == 403, (method, path)
            else:
                assert status == 501 or (path == "/" and status == 404), (method, path, status)
        extra = path.rstrip("/") + "/extra"
        if not any(_matches(other, extra) for other in paths):
            assert await _probe(probe, sni, extra, "get") == 404, extra


async def test_served_document_matches_the_routes(tmp_path: Path) -> None:
    args = microtrio.DaemonArgs(
        version="2.0",
        servers={"kv": KV_SERVER, "extended": EXTENDED_SERVER},
        schema_updates=SCHEMA_UPDATES,
        drain_timeout=2,
    )
    async with trio.open_nursery() as nursery:
        member = await run_member(nursery, tmp_path, args)
        response = await member.request("GET", "/core/1.0/openapi.json", via="tls")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        doc = response.json()
        check_document(doc)
        try:
            from openapi_spec_validator import validate
        except ImportError:  # only the structural check above then
            pass
        else:
            validate(doc)
        assert doc["info"]["version"] == "2.0"
        paths = doc["paths"]
        for expected in ("/core/1.0", "/core/1.0/metrics", "/1.0/kv/{key}", "/1.0/extended"):
            assert expected in paths
        assert not any(p.startswith("/core/control") for p in paths)  # control socket only

        # An untrusted caller is answered by the router before any handler runs for
        # trusted-only actions: 404 = no such path, 501 = no such method, else served.
        probe, sni = _untrusted_client(member)
        with trio.fail_after(CEILING):
            async with probe:
                await _check_routes(probe, sni, paths)

        # the control socket documents its own table: core/control too, same core paths
        unix = (await member.request("GET", "/core/1.0/openapi.json")).json()
        check_document(unix)
        assert set(unix["paths"]) - set(paths) == {
            "/core/control",
            "/core/control/shutdown",
            "/core/control/tokens",
        }
        assert set(paths) <= set(unix["paths"])
        # untrusted: 403
        denied = await member.request("GET", "/core/1.0/openapi.json", via="tls", cert=False)
        assert denied.status_code == 403
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["/", "/core/1.0/openapi.json"])
def test_paths_are_in_the_generated_document(path: str) -> None:
    doc = build_openapi(Router([public_resources()]).routes())
    assert path in doc["paths"] or path == "/core/1.0/openapi.json"
