"""Key pairs, fingerprints and the TLS contexts of members.

Theory of operation
-------------------
Every certificate microtrio makes is a self-signed ECDSA P-384 certificate (O=LXD,
CN=``user@<name>`` for server certificates, SANs: the DNS name, 127.0.0.1 and ::1, ten
years, ``CA:TRUE``) so that it can be pinned as its own trust anchor (reference 3.3).

Servers (:func:`server_ssl_context`) *request* a client certificate and accept ANY
certificate at the TLS layer; the trust decision is made per request by comparing the
certificate bytes with the truststore (see ``_cluster/_truststore.py`` and the listener
seam in ``_api/_listener.py``). Python's ``ssl`` module has no "request but do not verify"
mode (``CERT_OPTIONAL`` aborts the handshake on an unknown certificate), so the server
context installs an OpenSSL verify callback that accepts every chain; see
:func:`_accept_any_client_certificate`. If that hook is unavailable (see ``_accept_any_client_certificate``) the context falls
back to ``CERT_OPTIONAL`` anchored on the certificates passed as ``client_cas``
(normally the truststore), which still requests and verifies, but then an unknown
certificate fails the handshake instead of reaching the untrusted endpoints.

Clients (:func:`client_ssl_context`) present their own pair and pin the expected
remote certificate: it is the only trust anchor, and the TLS server name is its first
DNS SAN (:func:`pinned_server_name`), so ``https://<ip>:<port>`` URLs still verify.
A pin may be a PEM *bundle* of several certificates (during a cluster certificate
rotation every member pins the old and the new one, see ``_cluster/_rotation.py`` and
:func:`cluster_pin_bundle`): each is a trust anchor; when their first DNS SANs differ the
name check is off and the anchors alone decide.

Live reload (reference 7.9): listeners read :attr:`SSLContextHolder.context` once per
accepted connection, so :meth:`SSLContextHolder.swap` makes new connections use a new
certificate while established ones keep theirs.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._cluster._names import parse_address
from ._errors import StateError, UnavailableError, ValidationError
from ._state import atomic_write

if TYPE_CHECKING:
    from ._state import StateDir

__all__ = [
    "CertKeyPair",
    "MissingKeyPairError",
    "SSLContextHolder",
    "cert_der",
    "cert_pem",
    "client_ssl_context",
    "cluster_pin_bundle",
    "cluster_pin_files",
    "load_certificates",
    "dns_names",
    "ensure_server_cert",
    "ensure_server_cert_async",
    "fetch_remote_certificate",
    "fingerprint",
    "generate_cert_key_pair",
    "generate_cert_key_pair_async",
    "load_cert_key_pair",
    "load_cert_key_pair_if_exists",
    "open_tls_stream",
    "load_certificate",
    "pinned_server_name",
    "server_ssl_context",
    "sign_with_key",
    "verify_signature",
    "write_cert_key_pair",
]

logger = logging.getLogger("microtrio.certs")

VALIDITY = datetime.timedelta(days=3650)


@final
@dataclass(frozen=True, slots=True)
class CertKeyPair:
    """A PEM certificate, its PEM private key and an optional PEM CA (all ``bytes``)."""

    cert: bytes
    key: bytes
    ca: bytes | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return load_certificate(self.cert)

    @property
    def der(self) -> bytes:
        return cert_der(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


class MissingKeyPairError(StateError, FileNotFoundError):
    """A key pair file does not exist (also a FileNotFoundError, for ``except`` clauses)."""


# -- certificate helpers -----------------------------------------------------------------


def load_certificate(data: bytes | str | x509.Certificate) -> x509.Certificate:
    """Parse a PEM (str or bytes) or DER certificate; ValidationError if it is not one."""
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"Invalid certificate: {exc}") from exc


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or the one of a DER blob), in order;
    ValidationError if there is none or one does not parse."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b"-----BEGIN" not in raw:
        return [load_certificate(raw)]
    try:
        found = x509.load_pem_x509_certificates(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"Invalid certificate: {exc}") from exc
    if not found:
        raise ValidationError("Invalid certificate: no certificate found")
    return found


def cert_der(data: bytes | str | x509.Certificate) -> bytes:
    """The DER bytes of a PEM/DER certificate."""
    return load_certificate(data).public_bytes(serialization.Encoding.DER)


def cert_pem(data: bytes | str | x509.Certificate) -> str:
    """The PEM text of a PEM/DER certificate."""
    return load_certificate(data).public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(data: bytes | str | x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER (the format used everywhere)."""
    return hashlib.sha256(cert_der(data)).hexdigest()


def dns_names(data: bytes | str | x509.Certificate) -> list[str]:
    """The DNS subject alternative names of a certificate, in order."""
    cert = load_certificate(data)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def pinned_server_name(data: bytes | str | x509.Certificate) -> str:
    """The TLS server name to use when pinning ``data``: its first DNS SAN."""
    names = dns_names(data)
    if not names:
        raise ValidationError("Pinned certificate has no DNS subject alternative name")
    return names[0]


def is_within_validity(
    data: bytes | str | x509.Certificate, now: datetime.datetime | None = None
) -> bool:
    """True when ``now`` (UTC, default: the current wall clock) is inside the validity."""
    cert = load_certificate(data)
    moment = now if now is not None else datetime.datetime.now(datetime.UTC)
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


# -- generation, storage -----------------------------------------------------------------


def generate_cert_key_pair(
    name: str, *, common_name: str | None = None, now: datetime.datetime | None = None
) -> CertKeyPair:
    """Generate a self-signed ECDSA P-384 pair for ``name`` (blocking: prefer the async one).

    Subject O=LXD, CN=``common_name`` (default ``name``); SANs: DNS ``name``, IP 127.0.0.1
    and ::1; valid ten years from ``now``; ``CA:TRUE`` so it can be pinned as an anchor.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LXD"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or name),
        ]
    )
    sans = [
        x509.DNSName(name),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    serial = int.from_bytes(os.urandom(16), "big") >> 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA384())
    )
    return CertKeyPair(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


async def generate_cert_key_pair_async(name: str, *, common_name: str | None = None) -> CertKeyPair:
    """:func:`generate_cert_key_pair` in a worker thread."""
    return await trio.to_thread.run_sync(
        lambda: generate_cert_key_pair(name, common_name=common_name)
    )


def write_cert_key_pair(
    crt_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    pair: CertKeyPair,
    *,
    ca_path: str | os.PathLike[str] | None = None,
    crt_mode: int = 0o644,
) -> None:
    """Write a pair atomically: certificate ``crt_mode``, key 0600, CA (if any) 0644."""
    try:
        atomic_write(key_path, pair.key, 0o600)
        atomic_write(crt_path, pair.cert, crt_mode)
        if ca_path is not None and pair.ca is not None:
            atomic_write(ca_path, pair.ca, 0o644)
    except OSError as exc:
        raise StateError(f"Cannot write key pair {crt_path}: {exc}") from exc


def validate_pair(pair: CertKeyPair) -> CertKeyPair:
    """Check that the PEM blocks parse and that the key matches the certificate."""
    cert = load_certificate(pair.cert)
    try:
        key = serialization.load_pem_private_key(pair.key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"Invalid private key: {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ValidationError("Private key does not match the certificate")
    if pair.ca is not None:
        load_certificate(pair.ca)
    return pair


def load_cert_key_pair(
    crt_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    ca_path: str | os.PathLike[str] | None = None,
) -> CertKeyPair:
    """Read and validate a pair from files (blocking). A missing file raises
    MissingKeyPairError; an unreadable or invalid one StateError naming it."""
    try:
        with open(crt_path, "rb") as handle:
            cert = handle.read()
        with open(key_path, "rb") as handle:
            key = handle.read()
        ca = None
        if ca_path is not None and os.path.exists(ca_path):
            with open(ca_path, "rb") as handle:
                ca = handle.read()
    except FileNotFoundError as exc:
        raise MissingKeyPairError(f"Missing key pair file {exc.filename}") from exc
    except OSError as exc:
        raise StateError(f"Cannot read key pair {crt_path}: {exc}") from exc
    try:
        return validate_pair(CertKeyPair(cert=cert, key=key, ca=ca))
    except ValidationError as exc:
        raise StateError(f"Invalid key pair {crt_path} / {key_path}: {exc}") from exc


def load_cert_key_pair_if_exists(
    crt_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    ca_path: str | os.PathLike[str] | None = None,
) -> CertKeyPair | None:
    """Like :func:`load_cert_key_pair`, but None when neither file exists."""
    if not os.path.exists(crt_path) and not os.path.exists(key_path):
        return None
    return load_cert_key_pair(crt_path, key_path, ca_path)


def ensure_server_cert(state: StateDir, name: str) -> CertKeyPair:
    """Load ``server.crt``/``server.key``, generating them if absent or if ``name`` is not
    among the certificate's DNS SANs (CN=``user@<name>``). Blocking."""
    pair = load_cert_key_pair_if_exists(state.server_crt, state.server_key)
    if pair is not None and name in dns_names(pair.cert):
        return pair
    logger.info("generating server certificate for %s in %s", name, state.path)
    pair = generate_cert_key_pair(name, common_name=f"user@{name}")
    write_cert_key_pair(state.server_crt, state.server_key, pair)
    return pair


async def ensure_server_cert_async(state: StateDir, name: str) -> CertKeyPair:
    """:func:`ensure_server_cert` in a worker thread."""
    return await trio.to_thread.run_sync(ensure_server_cert, state, name)


# -- signatures (cluster certificate rotation links) ------------------------------------


def sign_with_key(key_pem: bytes, data: bytes) -> bytes:
    """Sign ``data`` with a PEM private key (ECDSA/SHA-384, RSA PKCS#1 v1.5/SHA-256 or
    Ed25519); ValidationError for another kind of key."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"Invalid private key: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA384()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise ValidationError(f"Cannot sign with a {type(key).__name__}")


def verify_signature(cert: bytes | str | x509.Certificate, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``data`` verifies with the certificate's public key."""
    public = load_certificate(cert).public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA384()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


# -- TLS contexts ------------------------------------------------------------------------


def _load_chain(context: ssl.SSLContext, pair: CertKeyPair) -> None:
    # ssl only loads chains from files: use a private (0700) temporary directory.
    validate_pair(pair)
    with tempfile.TemporaryDirectory(prefix="microtrio-tls-") as tmp:
        crt = os.path.join(tmp, "tls.crt")
        key = os.path.join(tmp, "tls.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pair.key)
        with open(crt, "wb") as handle:
            handle.write(pair.cert)
        context.load_cert_chain(crt, key)


# -- accepting any client certificate ----------------------------------------------------
#
# OpenSSL decides through the verify callback whether a failed chain check aborts the
# handshake. Python's ssl keeps whatever callback the SSL_CTX has when ``verify_mode`` is
# changed, but offers no way to set one; we set it once per context through ctypes on the
# very libssl that ``_ssl`` is linked against. The callback returns 1 ("continue") for every
# certificate, so any client certificate is accepted and the trust decision is made per
# request by byte comparison with the truststore. This relies on CPython's PySSLContext
# layout (the SSL_CTX pointer right after the object header); it is checked at run time
# against values read through the public API, and on any mismatch the hook is not used.

_SSL_VERIFY_PEER = 1
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_verify(preverify_ok: int, store_ctx: int | None) -> int:
    return 1


_ACCEPT_CALLBACK = _VERIFY_CALLBACK(_accept_verify)


def _libssl() -> ctypes.CDLL | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    except (OSError, AttributeError):
        return None
    return lib


_LIBSSL = _libssl()


def _accept_any_client_certificate(context: ssl.SSLContext) -> bool:
    """Make ``context`` request any client certificate and accept it; False if impossible."""
    if _LIBSSL is None or type(context) is not ssl.SSLContext:
        return False
    context.verify_mode = ssl.CERT_OPTIONAL
    ctx_ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if (
        not ctx_ptr
        or _LIBSSL.SSL_CTX_get_verify_mode(ctx_ptr) != _SSL_VERIFY_PEER
        or _LIBSSL.SSL_CTX_get_options(ctx_ptr) != int(context.options)
    ):
        context.verify_mode = ssl.CERT_NONE
        logger.warning("cannot install the TLS verify callback; client CAs will be used")
        return False
    _LIBSSL.SSL_CTX_set_verify(ctx_ptr, _SSL_VERIFY_PEER, _ACCEPT_CALLBACK)
    return True


#: What a listener offers by ALPN unless told otherwise: HTTP/1.1 only.
HTTP_ALPN: tuple[str, ...] = ("http/1.1",)


def server_ssl_context(
    pair: CertKeyPair,
    *,
    client_cas: list[bytes] | None = None,
    alpn_protocols: Sequence[str] = HTTP_ALPN,
) -> ssl.SSLContext:
    """A TLS 1.3 server context that presents ``pair`` and requests (not requires) any
    client certificate; see the module docstring for how any certificate is accepted.
    ``alpn_protocols`` are offered by ALPN (the core listener adds the Raft channel's).

    Building a context writes the pair to a private temporary directory (the ``ssl``
    module loads chains from files only): a few milliseconds of blocking work."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # No session tickets: nothing resumes sessions, and each costs an encryption and a
    # record on every new connection.
    context.num_tickets = 0
    context.set_alpn_protocols(list(alpn_protocols))
    _load_chain(context, pair)
    if not _accept_any_client_certificate(context):
        for ca in client_cas or []:
            context.load_verify_locations(cadata=cert_pem(ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_ssl_context(pair: CertKeyPair | None, pinned: bytes | str) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``pair`` whose only trust anchors are the
    certificate(s) of ``pinned`` (one certificate, or a PEM bundle).

    Connect with ``server_hostname=pinned_server_name(pinned)``. With a bundle whose
    certificates have different first DNS SANs the name check is off (the pins decide).
    """
    anchors = load_certificates(pinned)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata="".join(cert_pem(cert) for cert in anchors))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if len({tuple(dns_names(cert)[:1]) for cert in anchors}) > 1:
        context.check_hostname = False
    if pair is not None:
        _load_chain(context, pair)
    return context


def cluster_pin_files(state: StateDir) -> tuple[Path, Path]:
    """``(cluster.next.crt, cluster.prev.crt)``: the certificates pinned beside
    ``cluster.crt`` while a rotation is under way (``_cluster/_rotation.py``)."""
    return state.path / "cluster.next.crt", state.path / "cluster.prev.crt"


def cluster_pin_bundle(state: StateDir) -> bytes:
    """What a member pins when it dials another one (blocking): ``cluster.crt``, plus
    the incoming and outgoing certificates while a rotation is under way."""
    bundle = state.cluster_crt.read_bytes()
    for extra in cluster_pin_files(state):
        try:
            bundle += b"\n" + extra.read_bytes()
        except FileNotFoundError:
            continue
    return bundle


async def open_tls_stream(
    address: str, *, cert: CertKeyPair | None, pinned: bytes | str
) -> trio.SSLStream[trio.SocketStream]:
    """Dial ``address`` (``ip:port``) over mutual TLS, presenting ``cert`` and pinning
    ``pinned`` (server name = its first DNS SAN), with the handshake done.

    No ALPN protocol is offered, so a microtrio listener treats the connection as HTTP
    (the Raft channel offers its own protocol on its own context). Bound the wait with
    ``trio.fail_after``. Failures raise UnavailableError (a pin mismatch says so).
    """
    host, port = parse_address(address)
    context = client_ssl_context(cert, pinned)
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise UnavailableError(f"Cannot connect to {address}: {exc}") from exc
    stream = trio.SSLStream(tcp, context, server_hostname=pinned_server_name(pinned))
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
            raise UnavailableError(
                f"TLS verification of {address} failed (certificate does not match the "
                f"pinned one): {exc.__cause__.verify_message}"
            ) from exc
        raise UnavailableError(f"TLS handshake with {address} failed: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def fetch_remote_certificate(address: str) -> bytes:
    """Fetch a peer's TLS certificate WITHOUT verifying it (join, reference 7.4 step 2).

    Returns the DER bytes; the caller must compare :func:`fingerprint` with the token and
    bound the wait with ``trio.fail_after``. Connection failures raise UnavailableError.
    """
    host, port = parse_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, context, server_hostname=None)
        try:
            await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
        finally:
            await trio.aclose_forcefully(stream)
    except (OSError, trio.BrokenResourceError) as exc:
        raise UnavailableError(f"Cannot fetch the certificate of {address}: {exc}") from exc
    if not der:
        raise UnavailableError(f"{address} presented no certificate")
    return bytes(der)


@final
class SSLContextHolder:
    """A swappable server SSL context; listeners read :attr:`context` per connection.

    ``swap(pair)`` builds a new context for ``pair`` (raising before anything changes if
    the pair is invalid) and makes every later connection use it. Every context it builds
    offers the same ``alpn_protocols`` (a swapped core listener still offers the Raft
    channel).
    """

    def __init__(
        self,
        pair: CertKeyPair,
        *,
        client_cas: list[bytes] | None = None,
        alpn_protocols: Sequence[str] = HTTP_ALPN,
    ) -> None:
        self._client_cas = client_cas
        self._pair = pair
        self._alpn = tuple(alpn_protocols)
        self._context = server_ssl_context(pair, client_cas=client_cas, alpn_protocols=self._alpn)

    @property
    def alpn_protocols(self) -> tuple[str, ...]:
        return self._alpn

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def pair(self) -> CertKeyPair:
        return self._pair

    def swap(self, pair: CertKeyPair, *, client_cas: list[bytes] | None = None) -> None:
        if client_cas is not None:
            self._client_cas = client_cas
        context = server_ssl_context(pair, client_cas=self._client_cas, alpn_protocols=self._alpn)
        self._pair, self._context = pair, context
        logger.info("listener certificate swapped (fingerprint %s)", pair.fingerprint)
