from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from microtrio import StateError, UnavailableError, ValidationError
from microtrio._certs import (
    CertKeyPair,
    SSLContextHolder,
    cert_der,
    cert_pem,
    client_ssl_context,
    dns_names,
    ensure_server_cert,
    ensure_server_cert_async,
    fetch_remote_certificate,
    fingerprint,
    generate_cert_key_pair_async,
    is_within_validity,
    load_cert_key_pair,
    load_certificate,
    pinned_server_name,
    server_ssl_context,
    write_cert_key_pair,
)
from microtrio._state import StateDir


def test_generated_certificate_shape(server_pair: CertKeyPair) -> None:
    cert = load_certificate(server_pair.cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP384R1)
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "LXD"
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "user@srv.example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["srv.example"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3640) < lifetime < datetime.timedelta(days=3660)
    assert dns_names(server_pair.cert) == ["srv.example"]
    assert pinned_server_name(server_pair.cert) == "srv.example"


def test_fingerprint_formats(server_pair: CertKeyPair) -> None:
    der = ssl.PEM_cert_to_DER_cert(server_pair.cert.decode())
    expected = hashlib.sha256(der).hexdigest()
    assert fingerprint(server_pair.cert) == expected
    assert fingerprint(server_pair.cert.decode()) == expected
    assert fingerprint(der) == expected
    assert server_pair.fingerprint == expected and len(expected) == 64
    assert expected == expected.lower()
    assert cert_der(cert_pem(der)) == der


def test_invalid_certificate_input() -> None:
    with pytest.raises(ValidationError):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValidationError):
        fingerprint(b"\x30\x03garbage")


def test_validity_window(server_pair: CertKeyPair) -> None:
    assert is_within_validity(server_pair.cert)
    far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4000)
    assert not is_within_validity(server_pair.cert, far)


def test_write_and_load_pair(tmp_path: Path, server_pair: CertKeyPair) -> None:
    crt, key = tmp_path / "a.crt", tmp_path / "a.key"
    write_cert_key_pair(crt, key, server_pair)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_cert_key_pair(crt, key) == server_pair


def test_load_rejects_mismatched_key(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    crt, key = tmp_path / "a.crt", tmp_path / "a.key"
    write_cert_key_pair(crt, key, CertKeyPair(server_pair.cert, client_pair.key))
    with pytest.raises(StateError, match="does not match"):
        load_cert_key_pair(crt, key)
    key.write_bytes(b"junk")
    with pytest.raises(StateError, match="a.crt"):
        load_cert_key_pair(crt, key)


async def test_ensure_server_cert_generates_keeps_and_regenerates(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    first = await ensure_server_cert_async(state, "m1")
    assert dns_names(first.cert) == ["m1"]
    assert stat.S_IMODE(os.stat(state.server_key).st_mode) == 0o600
    assert ensure_server_cert(state, "m1") == first  # kept
    second = ensure_server_cert(state, "m2.example")  # name not in SANs: regenerated
    assert second != first and dns_names(second.cert) == ["m2.example"]
    subject = load_certificate(second.cert).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "user@m2.example"
    assert load_cert_key_pair(state.server_crt, state.server_key) == second


# -- TLS behaviour -----------------------------------------------------------------------


@asynccontextmanager
async def tls_server(holder: SSLContextHolder) -> AsyncIterator[tuple[int, list[bytes | None]]]:
    """A raw TLS server recording each handshake's client certificate (DER or None)."""
    seen: list[bytes | None] = []

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, holder.context, server_side=True)
        try:
            await tls.do_handshake()
            seen.append(tls.getpeercert(binary_form=True))
            await tls.send_all(b"ok")
        except trio.BrokenResourceError:
            seen.append(b"handshake-failed")
        finally:
            await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1], seen
        nursery.cancel_scope.cancel()


async def _dial(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname=server_hostname
    )
    try:
        await stream.do_handshake()
        return bytes(await stream.receive_some(10))
    finally:
        await trio.aclose_forcefully(stream)


async def test_server_accepts_any_client_certificate_and_none(
    server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    with trio.fail_after(20):
        async with tls_server(SSLContextHolder(server_pair)) as (port, seen):
            ctx = client_ssl_context(client_pair, server_pair.cert)
            assert await _dial(port, ctx, "srv.example") == b"ok"
            ctx_anon = client_ssl_context(None, server_pair.cert)
            assert await _dial(port, ctx_anon, "srv.example") == b"ok"
    # an unknown self-signed client certificate reached the server, byte for byte
    assert seen == [client_pair.der, None]


async def test_pinning_rejects_another_certificate_with_the_same_name(
    server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    assert dns_names(other_pair.cert) == dns_names(server_pair.cert)
    with trio.fail_after(20):
        async with tls_server(SSLContextHolder(server_pair)) as (port, _):
            wrong = client_ssl_context(client_pair, other_pair.cert)
            with pytest.raises(trio.BrokenResourceError) as info:
                await _dial(port, wrong, "srv.example")
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            right = client_ssl_context(client_pair, server_pair.cert)
            with pytest.raises(trio.BrokenResourceError):  # wrong server name
                await _dial(port, right, "not-the-name")
            assert await _dial(port, right, "srv.example") == b"ok"


async def test_server_context_is_tls13_only(server_pair: CertKeyPair) -> None:
    context = server_ssl_context(server_pair)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_OPTIONAL
    with trio.fail_after(20):
        async with tls_server(SSLContextHolder(server_pair)) as (port, _):
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(trio.BrokenResourceError):
                await _dial(port, old, "srv.example")


async def test_fetch_remote_certificate_and_live_swap(
    server_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    holder = SSLContextHolder(server_pair)
    with trio.fail_after(20):
        async with tls_server(holder) as (port, _):
            der = await fetch_remote_certificate(f"127.0.0.1:{port}")
            assert fingerprint(der) == server_pair.fingerprint
            holder.swap(other_pair)
            assert holder.pair == other_pair
            der = await fetch_remote_certificate(f"127.0.0.1:{port}")
            assert fingerprint(der) == other_pair.fingerprint


async def test_swap_with_invalid_pair_changes_nothing(
    server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    holder = SSLContextHolder(server_pair)
    before = holder.context
    with pytest.raises(ValidationError):
        holder.swap(CertKeyPair(server_pair.cert, client_pair.key))
    assert holder.context is before and holder.pair == server_pair


async def test_fetch_remote_certificate_unreachable() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with trio.fail_after(20), pytest.raises(UnavailableError, match="Cannot fetch"):
        await fetch_remote_certificate(f"127.0.0.1:{port}")


async def test_async_generation() -> None:
    pair = await generate_cert_key_pair_async("async.example")
    assert dns_names(pair.cert) == ["async.example"]


def test_missing_pair_files(tmp_path: Path, server_pair: CertKeyPair) -> None:
    from microtrio._certs import MissingKeyPairError, load_cert_key_pair_if_exists

    crt, key = tmp_path / "a.crt", tmp_path / "a.key"
    assert load_cert_key_pair_if_exists(crt, key) is None
    with pytest.raises(MissingKeyPairError, match="a.crt"):
        load_cert_key_pair(crt, key)
    crt.write_bytes(server_pair.cert)  # key still missing: an error, not None
    with pytest.raises(StateError, match="a.key"):
        load_cert_key_pair_if_exists(crt, key)


async def test_fallback_without_verify_hook_anchors_on_client_cas(
    monkeypatch: pytest.MonkeyPatch,
    server_pair: CertKeyPair,
    client_pair: CertKeyPair,
    other_pair: CertKeyPair,
) -> None:
    # Where the OpenSSL verify callback cannot be installed, the server still requests
    # client certificates, verified against the given anchors (normally the truststore).
    import microtrio._certs as certs

    monkeypatch.setattr(certs, "_LIBSSL", None)
    holder = SSLContextHolder(server_pair, client_cas=[client_pair.cert])
    with trio.fail_after(20):
        async with tls_server(holder) as (port, seen):
            assert (
                await _dial(port, client_ssl_context(client_pair, server_pair.cert), "srv.example")
                == b"ok"
            )
            assert (
                await _dial(port, client_ssl_context(None, server_pair.cert), "srv.example")
                == b"ok"
            )
            with pytest.raises(trio.BrokenResourceError):
                await _dial(port, client_ssl_context(other_pair, server_pair.cert), "srv.example")
    assert seen[:2] == [client_pair.der, None]
