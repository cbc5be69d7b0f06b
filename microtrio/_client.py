"""The REST client: the control socket or mutual TLS to another member (reference 3.2/3.3).

``Client.unix(path)`` talks plain HTTP over ``control.socket`` (host ``control.socket``).
``Client.tls(address, cert=server_pair, pinned=cluster_crt)`` presents the member's own
pair and pins the expected remote certificate (its only trust anchor; the TLS server name
is its first DNS SAN, so IP URLs verify). Both parse the LXD envelope: error envelopes
raise :class:`~microtrio.RemoteError` with the HTTP status. Transport failures are mapped
at this seam: cannot connect -> UnavailableError, timed out -> TimeoutError_, TLS
verification failure -> UnavailableError naming the pin mismatch.

Derived clients (:meth:`Client.use_target`, :meth:`Client.notifier`) share the HTTP
connection pool of their parent; only the client that created it closes it.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, final
from urllib.parse import quote

import httpcore
import httpx
import trio

from ._certs import CertKeyPair, client_ssl_context, pinned_server_name
from ._cluster._names import parse_address
from ._errors import RemoteError, TimeoutError_, UnavailableError

__all__ = ["NOTIFIER_USER_AGENT", "Client"]

logger = logging.getLogger("microtrio.client")

NOTIFIER_USER_AGENT = "lxd-cluster-notifier"
DEFAULT_USER_AGENT = "microtrio"
DEFAULT_TIMEOUT = 30.0
# Keep-alive off, as microcluster: every call sees the current certificates and members.
_NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


class _ClosingStream(httpcore.AsyncNetworkStream):
    """A TCP stream whose TLS upgrade closes the socket on ANY failure, cancellation
    included: httpcore 1.0's trio stream closes it only on ``Exception``, so a request
    cancelled during the TLS handshake (trio's Cancelled is a BaseException: a heartbeat
    round's deadline, a member shutting down) left the connected socket open until the
    garbage collector found it."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with trio.CancelScope() as scope:
                scope.cancel()  # close now, without waiting (trio.aclose_forcefully)
                await self._inner.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _ClosingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend with :class:`_ClosingStream` for TCP connections."""

    def __init__(self) -> None:
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _ClosingStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _http_transport(
    *, verify: ssl.SSLContext | None = None, uds: str | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport without keep-alive on :class:`_ClosingBackend`."""
    # Our context (when given) also spares httpx building its default one, unused here.
    transport = httpx.AsyncHTTPTransport(
        verify=verify if verify is not None else True, limits=_NO_KEEPALIVE, uds=uds
    )
    # httpx builds its pool on httpcore's default backend and takes no backend argument:
    # the same pool (our TLS context, no keep-alive), on ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify,
        max_keepalive_connections=0,
        uds=uds,
        network_backend=_ClosingBackend(),
    )
    return transport


@final
class Client:
    """An async client of one member's REST API. Use ``async with`` or :meth:`aclose`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        description: str,
        sni_hostname: str | None = None,
        target: str | None = None,
        headers: Mapping[str, str] | None = None,
        owns_http: bool = True,
    ) -> None:
        """Low-level constructor; prefer :meth:`unix` and :meth:`tls`."""
        self._http = http
        self._description = description
        self._sni_hostname = sni_hostname
        self._target = target
        self._headers = dict(headers or {"User-Agent": DEFAULT_USER_AGENT})
        self._owns_http = owns_http

    def __repr__(self) -> str:
        return f"<Client {self._description}>"

    # -- construction --------------------------------------------------------------------

    @classmethod
    def unix(cls, socket_path: str | os.PathLike[str]) -> Client:
        """A client of the control socket at ``socket_path``."""
        path = os.fspath(socket_path)
        transport = _http_transport(uds=path)
        http = httpx.AsyncClient(
            transport=transport, base_url="http://control.socket", timeout=DEFAULT_TIMEOUT
        )
        return cls(http, description=f"unix:{path}")

    @classmethod
    def tls(cls, address: str, *, cert: CertKeyPair | None, pinned: bytes | str) -> Client:
        """A mutual-TLS client of the member at ``address`` (``ip:port``), presenting
        ``cert`` (normally server.crt) and pinning ``pinned`` (normally cluster.crt)."""
        host, port = parse_address(address)
        context = client_ssl_context(cert, pinned)
        url_host = f"[{host}]" if ":" in host else host
        transport = _http_transport(verify=context)
        http = httpx.AsyncClient(
            transport=transport,
            base_url=f"https://{url_host}:{port}",
            timeout=DEFAULT_TIMEOUT,
        )
        return cls(http, description=f"https://{address}", sni_hostname=pinned_server_name(pinned))

    def _derive(self, *, target: str | None, headers: Mapping[str, str]) -> Client:
        return Client(
            self._http,
            description=self._description,
            sni_hostname=self._sni_hostname,
            target=target,
            headers=headers,
            owns_http=False,
        )

    def use_target(self, name: str | None) -> Client:
        """A client that adds ``?target=<name>`` to every request (None: no target)."""
        return self._derive(target=name, headers=self._headers)

    def notifier(self, forwarded_address: str | None = None) -> Client:
        """A client in notification mode (``User-Agent: lxd-cluster-notifier`` and, if
        given, ``X-LXD-forwarded-address``), so the receiver does not fan out again."""
        headers = dict(self._headers)
        headers["User-Agent"] = NOTIFIER_USER_AGENT
        if forwarded_address is not None:
            headers["X-LXD-forwarded-address"] = forwarded_address
        return self._derive(target=self._target, headers=headers)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the one request path ------------------------------------------------------------

    async def query(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per-request HTTP timeout
    ) -> Any:
        """Send a request and return the envelope's ``metadata``.

        ``body`` (if not None) is sent as JSON. Error envelopes raise RemoteError(message,
        status); an undecodable non-200 answer raises RemoteError with the HTTP status.
        """
        query_params = dict(params or {})
        if self._target is not None:
            query_params["target"] = self._target
        extensions: dict[str, Any] = {}
        if self._sni_hostname is not None:
            extensions["sni_hostname"] = self._sni_hostname
        content = None
        headers = dict(self._headers)
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(
                method,
                path,
                content=content,
                params=query_params or None,
                headers=headers,
                timeout=timeout,
                extensions=extensions,
            )
        except httpx.TimeoutException as exc:
            raise TimeoutError_(f"{method} {path} on {self._description} timed out") from exc
        except httpx.TransportError as exc:
            raise self._map_transport_error(method, path, exc) from exc
        return _parse_envelope(response)

    def _map_transport_error(
        self, method: str, path: str, exc: httpx.TransportError
    ) -> UnavailableError:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return UnavailableError(
                    f"TLS verification of {self._description} failed (certificate does not "
                    f"match the pinned one): {cause.verify_message}"
                )
            cause = cause.__cause__ or cause.__context__
        if isinstance(exc, httpx.ConnectError):
            return UnavailableError(f"Cannot connect to {self._description}: {exc}")
        return UnavailableError(f"{method} {path} on {self._description} failed: {exc!r}")

    # -- typed helpers for the core endpoints --------------------------------------------

    async def status(self) -> dict[str, Any]:
        """``GET /core/1.0``: ``{name, address, version, ready, extensions}``."""
        result: dict[str, Any] = await self.query("GET", "/core/1.0")
        return result

    async def ready(self) -> None:
        """``GET /core/1.0/ready``: returns once the daemon is ready (RemoteError 503 if not)."""
        await self.query("GET", "/core/1.0/ready")

    async def wait_ready(self, *, poll_interval: float = 0.2) -> None:
        """Poll :meth:`ready` until it succeeds (bound it with ``trio.fail_after``)."""
        while True:
            try:
                await self.ready()
                return
            except (UnavailableError, RemoteError) as exc:
                if isinstance(exc, RemoteError) and exc.status != 503:
                    raise
            await trio.sleep(poll_interval)

    async def cluster_members(self) -> list[dict[str, Any]]:
        """``GET /core/1.0/cluster``: the ``ClusterMember`` list."""
        result: list[dict[str, Any]] = await self.query("GET", "/core/1.0/cluster")
        return result

    async def remove_member(
        self, name: str, *, force: bool = False, address: str | None = None
    ) -> None:
        """``DELETE /core/1.0/cluster/{name}`` (``?force=1``, ``?address=``)."""
        params = {"force": "1"} if force else {}
        if address is not None:
            params["address"] = address
        await self.query("DELETE", f"/core/1.0/cluster/{quote(name, safe='')}", params=params)

    async def add_token(self, name: str, *, expire_after_ns: int = 0) -> str:
        """``POST /core/control/tokens``: a join token string for member ``name``."""
        body = {"name": name, "expire_after": expire_after_ns}
        token: str = await self.query("POST", "/core/control/tokens", body)
        return token

    async def list_tokens(self) -> list[dict[str, Any]]:
        """``GET /core/control/tokens``: ``[{name, token, expires_at}]``."""
        result: list[dict[str, Any]] = await self.query("GET", "/core/control/tokens")
        return result

    async def revoke_token(self, name: str) -> None:
        """``DELETE /core/1.0/tokens/{name}``."""
        await self.query("DELETE", f"/core/1.0/tokens/{quote(name, safe='')}")

    async def bootstrap(
        self, name: str, address: str, config: Mapping[str, str] | None = None
    ) -> None:
        """``POST /core/control`` with ``bootstrap: true``."""
        body = _control(bootstrap=True, name=name, address=address, config=config)
        await self.query("POST", "/core/control", body)

    async def join(
        self, name: str, address: str, token: str, config: Mapping[str, str] | None = None
    ) -> None:
        """``POST /core/control`` with ``join_token``."""
        body = _control(bootstrap=False, name=name, address=address, config=config, token=token)
        await self.query("POST", "/core/control", body)

    async def shutdown(self) -> None:
        """``POST /core/control/shutdown``."""
        await self.query("POST", "/core/control/shutdown")

    async def sql_dump(self, *, schema_only: bool = False) -> str:
        """``GET /core/internal/sql[?schema=1]``: the dump text."""
        params = {"schema": "1"} if schema_only else None
        result = await self.query("GET", "/core/internal/sql", params=params)
        return str(result.get("text", "")) if isinstance(result, dict) else ""

    async def sql_query(self, query: str) -> dict[str, Any]:
        """``POST /core/internal/sql``: ``{"Results": [...]}``."""
        result: dict[str, Any] = await self.query("POST", "/core/internal/sql", {"query": query})
        return result

    async def update_certificate(
        self, name: str, cert: str, key: str, ca: str | None = None
    ) -> None:
        """``PUT /core/1.0/cluster/certificates/{name}`` with ``KeyPair{cert, key, ca}``."""
        body = {"cert": cert, "key": key, "ca": ca or ""}
        path = f"/core/1.0/cluster/certificates/{quote(name, safe='')}"
        await self.query("PUT", path, body)

    async def servers(self) -> dict[str, dict[str, str]]:
        """``GET /core/1.0/daemon/servers``: ``{name: {address}}``."""
        result: dict[str, dict[str, str]] = await self.query("GET", "/core/1.0/daemon/servers")
        return result

    async def set_servers(self, servers: Mapping[str, Mapping[str, str]]) -> None:
        """``PUT /core/1.0/daemon/servers`` (full replacement)."""
        await self.query(
            "PUT", "/core/1.0/daemon/servers", {k: dict(v) for k, v in servers.items()}
        )

    async def request_admission(self, member: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /core/internal/cluster`` (join admission): a ``TokenResponse``."""
        result: dict[str, Any] = await self.query("POST", "/core/internal/cluster", dict(member))
        return result

    async def reset_member(self, name: str, *, force: bool = False) -> None:
        """``PUT /core/internal/cluster/{name}``: tell a removed member to wipe itself."""
        params = {"force": "1"} if force else None
        await self.query("PUT", f"/core/internal/cluster/{quote(name, safe='')}", params=params)

    async def add_trust(self, name: str, address: str, certificate: str) -> None:
        """``POST /core/internal/truststore`` with ``ClusterMemberLocal``."""
        body = {"name": name, "address": address, "certificate": certificate}
        await self.query("POST", "/core/internal/truststore", body)

    async def remove_trust(self, name: str) -> None:
        """``DELETE /core/internal/truststore/{name}``."""
        await self.query("DELETE", f"/core/internal/truststore/{quote(name, safe='')}")


def _control(
    *,
    bootstrap: bool,
    name: str,
    address: str,
    config: Mapping[str, str] | None,
    token: str = "",
) -> dict[str, Any]:
    return {
        "bootstrap": bootstrap,
        "config": dict(config or {}),
        "join_token": token,
        "address": address,
        "name": name,
    }


def _parse_envelope(response: httpx.Response) -> Any:
    try:
        envelope = json.loads(response.content)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or "type" not in envelope:
        if response.status_code != 200:
            text = response.text.strip()[:200] or response.reason_phrase
            raise RemoteError(f"HTTP {response.status_code}: {text}", response.status_code)
        raise RemoteError("Undecodable response envelope", 500)
    if envelope.get("type") == "error":
        message = envelope.get("error") or response.reason_phrase
        status = envelope.get("error_code") or response.status_code
        raise RemoteError(str(message), int(status))
    if response.status_code != 200 or envelope.get("status_code", 200) != 200:
        raise RemoteError(
            str(envelope.get("error") or envelope.get("status") or response.reason_phrase),
            response.status_code if response.status_code != 200 else 400,
        )
    return envelope.get("metadata")
