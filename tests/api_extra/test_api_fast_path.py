"""Fast endpoints (``EndpointAction(fast=True)``): the bare ASGI dispatcher answers exactly
as the Quart path does.

Two single members of the kv example run side by side: one with the kv actions fast (as
the example ships them), one with the same actions through Quart. Every request of a
script (success, 404, 403 without a certificate or with a wrong Host, 501, 400, 413 by
Content-Length and by a chunked body, over TLS and over the control socket) goes to both,
and the answers must be identical (status, headers but the date, body). A spy proves the
fast member really answered the kv requests without Quart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _member_support import CEILING, Running, run_member

import microtrio
from examples.kv import service
from microtrio._api import _fast
from microtrio._api._fast import FastRequest

LIMITS = microtrio.Limits(max_body_size=4096, body_timeout=5.0)


def kv_args(*, fast: bool) -> microtrio.DaemonArgs:
    """The kv example's arguments, its actions fast or not."""
    resources = []
    for res in service.KV_SERVER.resources:
        endpoints = []
        for ep in res.endpoints:
            changes = {}
            for method in ("get", "put", "delete"):
                action = getattr(ep, method)
                if action is not None:
                    changes[method] = dataclasses.replace(action, fast=fast)
            endpoints.append(dataclasses.replace(ep, **changes))
        resources.append(dataclasses.replace(res, endpoints=endpoints))
    server = dataclasses.replace(service.KV_SERVER, resources=resources)
    args = service.daemon_args(limits=LIMITS, drain_timeout=2.0)
    return dataclasses.replace(args, servers={"kv": server, "extra": extra_server(fast)})


async def _echo(state: microtrio.State, req: Any) -> Any:
    """JSON body, query arguments, a header and the path variable, as metadata."""
    body = await req.get_json()
    return {
        "body": body,
        "x": req.args.getlist("x"),
        "header": req.headers.get("X-Test"),
        "name": (req.view_args or {}).get("name"),
        "length": req.content_length,
        # what the listener saw of the connection (the ports differ between the members)
        "remote": req.remote_addr,
        "scheme": req.scheme,
        "server": req.server is not None,
        "version": req.scope.get("http_version"),
    }


async def _only_with_header(state: microtrio.State, req: Any) -> None:
    if req.headers.get("X-Allow") != "yes":
        raise microtrio.ForbiddenError("no X-Allow header")


async def _hello(state: microtrio.State, req: Any) -> Any:
    return ["hello", state.name]


async def _boom(state: microtrio.State, req: Any) -> Any:
    raise ValueError("a handler bug")


def extra_server(fast: bool) -> microtrio.Server:
    """Endpoints exercising the other gates: an access handler, an open action, a JSON
    body, a handler bug (500)."""

    def action(handler: Any, **kwargs: Any) -> microtrio.EndpointAction:
        return microtrio.EndpointAction(handler, fast=fast, **kwargs)

    return microtrio.Server(
        resources=[
            microtrio.Resources(
                "1.0",
                [
                    microtrio.Endpoint("echo/{name}", post=action(_echo)),
                    microtrio.Endpoint(
                        "guarded", get=action(_hello, access_handler=_only_with_header)
                    ),
                    microtrio.Endpoint("open", get=action(_hello, allow_untrusted=True)),
                    microtrio.Endpoint("boom", get=action(_boom)),
                ],
            )
        ],
        core_api=True,
        serve_unix=True,
    )


class Chunks:
    """A body httpx sends chunked (no Content-Length); an iterator object, not a
    generator, so nothing is left to the garbage collector."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)


def script(fast_host: str, slow_host: str) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, request options, expected status) in order."""
    del fast_host, slow_host
    value = bytes(range(256))
    return [
        ("PUT", "/1.0/kv/alpha", {"content": value}, 200),
        ("GET", "/1.0/kv/alpha", {}, 200),
        ("GET", "/1.0/kv/alpha?stale=1", {}, 200),
        ("GET", "/1.0/kv/alpha?stale=yes&x=1&x=2", {}, 200),
        ("PUT", "/1.0/kv/alpha", {"content": b""}, 200),
        ("GET", "/1.0/kv/alpha", {}, 200),
        ("GET", "/1.0/kv/missing", {}, 404),
        ("DELETE", "/1.0/kv/alpha", {}, 200),
        ("DELETE", "/1.0/kv/alpha", {}, 404),
        ("GET", "/1.0/kv/alpha", {}, 404),
        ("PUT", "/1.0/kv/nocert", {"content": b"x", "cert": False}, 403),
        ("GET", "/1.0/kv/nocert", {"cert": False}, 403),
        ("PUT", "/1.0/kv/host", {"content": b"x", "headers": {"Host": "example.com"}}, 403),
        ("POST", "/1.0/kv/alpha", {"content": b"x"}, 501),
        ("GET", "/1.0/kv/" + "k" * 1025, {}, 400),
        ("GET", "/1.0/kv/a/b", {}, 404),
        ("PUT", "/1.0/kv/big", {"content": b"x" * 5000}, 413),
        ("PUT", "/1.0/kv/chunked", {"chunks": (b"x" * 3000, b"y" * 3000)}, 413),
        ("PUT", "/1.0/kv/chunked", {"chunks": (b"x" * 30, b"y" * 30)}, 200),
        ("GET", "/1.0/kv/chunked", {}, 200),
        ("GET", "/1.0/kv/big", {}, 404),
        ("PUT", "/1.0/kv/viaunix", {"content": b"u", "via": "unix"}, 200),
        ("GET", "/1.0/kv/viaunix", {"via": "unix"}, 200),
        ("GET", "/1.0/kv/nothere", {"via": "unix"}, 404),
        ("PUT", "/1.0/kv/big", {"content": b"x" * 5000, "via": "unix"}, 413),
        (
            "POST",
            "/1.0/echo/n1?x=1&x=2",
            {"json_body": {"a": [1, "b"]}, "headers": {"X-Test": "t"}},
            200,
        ),
        ("POST", "/1.0/echo/n1", {"content": b"{}"}, 200),  # not JSON content: None
        ("POST", "/1.0/echo/n2", {"json_body": [1], "via": "unix"}, 200),
        (
            "POST",
            "/1.0/echo/n1",
            {"content": b"{bad", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("GET", "/1.0/guarded", {}, 403),
        ("GET", "/1.0/guarded", {"headers": {"X-Allow": "yes"}}, 200),
        ("GET", "/1.0/guarded", {"headers": {"X-Allow": "yes"}, "cert": False}, 403),
        ("GET", "/1.0/open", {"cert": False}, 200),
        ("GET", "/1.0/boom", {}, 500),
    ]


def comparable(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, headers, response.content


async def test_fast_and_quart_paths_answer_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[str, str]] = []
    original = FastRequest.__init__

    def spy(self: FastRequest, scope: Any, *args: Any, **kwargs: Any) -> None:
        served.append((scope["method"], scope["path"]))
        original(self, scope, *args, **kwargs)

    monkeypatch.setattr(_fast.FastRequest, "__init__", spy)
    async with trio.open_nursery() as nursery:
        fast = await run_member(nursery, tmp_path / "fast", kv_args(fast=True))
        slow = await run_member(nursery, tmp_path / "slow", kv_args(fast=False))
        with trio.fail_after(4 * CEILING):
            await check_script(fast, slow)
        nursery.cancel_scope.cancel()
    # every kv request of the script that matched a route went through the fast path on
    # the fast member only (the slow member's kv routes are not fast: no dispatcher there)
    kv_methods = {("PUT", "/1.0/kv/alpha"), ("GET", "/1.0/kv/alpha"), ("DELETE", "/1.0/kv/alpha")}
    assert kv_methods <= set(served)
    assert ("POST", "/1.0/kv/alpha") not in served  # no fast action: Quart answered it
    assert ("GET", "/1.0/kv/a/b") not in served  # no route: Quart answered it
    puts = [s for s in served if s == ("PUT", "/1.0/kv/alpha")]
    assert len(puts) == 2  # the fast member's two PUTs, none from the slow one


async def check_script(fast: Running, slow: Running) -> None:
    for method, path, options, expected in script(fast.address, slow.address):
        answers = []
        for member in (fast, slow):
            opts = dict(options)
            opts.setdefault("via", "tls")
            headers = dict(opts.pop("headers", {}))
            if "chunks" in opts:  # a fresh iterator per request
                opts["content"] = Chunks(*opts.pop("chunks"))
            response = await member.request(method, path, headers=headers, **opts)
            answers.append(comparable(response))
        assert answers[0][0] == expected, (method, path, answers[0])
        assert answers[0] == answers[1], (method, path)


class _Receive:
    """An ASGI receive that hands out ``messages`` and then waits forever."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages)

    async def __call__(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "PUT",
        "path": "/1.0/kv/k",
        "query_string": b"a=1&a=2&b=",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8443),
        "scheme": "https",
    }


async def test_fast_request_body_limits(autojump_clock: trio.testing.MockClock) -> None:
    from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge, RequestTimeout

    def request(*messages: dict[str, Any], length: int | None = None) -> FastRequest:
        headers = [(b"content-type", b"application/json")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return FastRequest(_scope(headers), _Receive(*messages), max_body_size=10, body_timeout=5.0)

    ok = request(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}"},
    )
    assert ok.args.getlist("a") == ["1", "2"] and ok.args.get("b") == ""
    assert ok.headers["Remote-Addr"] == "127.0.0.1" and ok.is_json
    assert await ok.get_json() == {"a": 1}
    assert await ok.get_data() == b'{"a":1}'  # cached
    with pytest.raises(RequestEntityTooLarge):
        await request(length=11).get_data()  # refused before reading
    with pytest.raises(RequestEntityTooLarge):
        await request({"type": "http.request", "body": b"x" * 11, "more_body": True}).get_data()
    slow = request({"type": "http.request", "body": b"x", "more_body": True})
    start = trio.current_time()
    with pytest.raises(RequestTimeout):
        await slow.get_data()
    assert trio.current_time() - start == pytest.approx(5.0)
    with pytest.raises(ClientDisconnected):
        await request({"type": "http.disconnect"}).get_data()
