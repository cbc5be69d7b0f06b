"""The Raft channel's wire format, sans-IO: frames, stream records, the codec seam, addresses.

The channel is a TLS connection on the core listener that negotiated the ALPN protocol
:data:`RAFT_ALPN`. Its bytes are *records*, each a big-endian u32 length and that many
bytes:

* sender to receiver: a frame (below), or an empty record (a keepalive ping);
* receiver to sender: an empty record (first the welcome: the connection is accepted;
  then one pong per ping), or, just before the receiver closes, a *goodbye*: one code byte
  (:data:`GOODBYE_FORBIDDEN`, ...) and a UTF-8 reason.

Frame layout (big-endian)::

    magic "MTRF" | version u8 (=1) | flags u8 (=0) | sender node id u64 | count u32
    then ``count`` times: length u32 | encoded Raft message

Everything here is pure: bytes in, values out, :class:`~microtrio.ProtocolError` or
:class:`~microtrio.ValidationError` on anything malformed. :mod:`._transport` does the I/O.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from .._errors import ProtocolError, ValidationError
from ..raft import CodecError, Message, decode_message, encode_message

__all__ = [
    "CORE_ALPN_PROTOCOLS",
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER",
    "FRAME_LENGTH",
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "GOODBYE_FORBIDDEN",
    "GOODBYE_GOING_AWAY",
    "GOODBYE_MAX_SIZE",
    "GOODBYE_PROTOCOL_ERROR",
    "GOODBYE_TOO_BIG",
    "KEEPALIVE",
    "M",
    "RAFT_ALPN",
    "RAFT_CODEC",
    "Frame",
    "MessageLike",
    "RecordReader",
    "WireCodec",
    "client_certificates",
    "decode_frame",
    "decode_goodbye",
    "encode_frame",
    "encode_goodbye",
    "encode_record",
    "parse_address",
]

#: The ALPN protocol of the Raft channel on the core listener.
RAFT_ALPN: Final = "microtrio-raft/1"
#: What the core listener offers by ALPN: HTTP/1.1 and the Raft channel.
CORE_ALPN_PROTOCOLS: Final = ("http/1.1", RAFT_ALPN)
DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
FRAME_MAGIC: Final = b"MTRF"
FRAME_VERSION: Final = 1
FRAME_HEADER: Final = struct.Struct(">4sBBQI")
FRAME_LENGTH: Final = struct.Struct(">I")
#: An empty record: a ping from the sender; the welcome, or a pong, from the receiver.
KEEPALIVE: Final = FRAME_LENGTH.pack(0)

# Goodbye codes: why the receiver closes the connection.
GOODBYE_FORBIDDEN: Final = 1  # no trusted client certificate
GOODBYE_PROTOCOL_ERROR: Final = 2  # malformed frame or message
GOODBYE_TOO_BIG: Final = 3  # a record over the maximum frame size
GOODBYE_GOING_AWAY: Final = 4  # the receiver has no running transport
#: The largest goodbye record (code and reason).
GOODBYE_MAX_SIZE: Final = 256


# -- frames (sans-IO) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One record of the Raft channel: a batch of encoded messages from one sender."""

    sender: int
    payloads: tuple[bytes, ...]


def _frame_parts(sender: int, payloads: Iterable[bytes], parts: list[bytes]) -> list[bytes]:
    """Append a frame's pieces (header, then each payload behind its length) to ``parts``."""
    items = list(payloads)
    if sender <= 0:
        raise ValidationError(f"sender node id must be positive, got {sender}")
    parts.append(FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, 0, sender, len(items)))
    for payload in items:
        parts.append(FRAME_LENGTH.pack(len(payload)))
        parts.append(payload)
    return parts


def encode_frame(sender: int, payloads: Iterable[bytes]) -> bytes:
    """Build a frame; ``sender`` is the sending node id (non-zero)."""
    return b"".join(_frame_parts(sender, payloads, []))


def encode_record(sender: int, payloads: Iterable[bytes]) -> bytes:
    """A frame as one stream record (its length, then :func:`encode_frame`'s bytes),
    built with a single join."""
    parts = _frame_parts(sender, payloads, [b""])
    parts[0] = FRAME_LENGTH.pack(sum(map(len, parts)))
    return b"".join(parts)


def decode_frame(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> Frame:
    """Parse a frame; raise :class:`ProtocolError` on anything but a well-formed one."""
    if len(data) > max_size:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the maximum of {max_size}")
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError(f"frame of {len(data)} bytes is shorter than its header")
    magic, version, flags, sender, count = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if version != FRAME_VERSION:
        raise ProtocolError(f"unsupported frame version {version} (this member speaks 1)")
    if flags != 0:
        raise ProtocolError(f"unknown frame flags {flags:#x}")
    if sender == 0:
        raise ProtocolError("frame sender node id is 0")
    offset = FRAME_HEADER.size
    if count > (len(data) - offset) // FRAME_LENGTH.size:
        raise ProtocolError(f"frame claims {count} messages, too many for its size")
    view = memoryview(data)
    payloads = []
    for _ in range(count):
        if offset + FRAME_LENGTH.size > len(data):
            raise ProtocolError("frame truncated inside a length prefix")
        (length,) = FRAME_LENGTH.unpack_from(data, offset)
        offset += FRAME_LENGTH.size
        if offset + length > len(data):
            raise ProtocolError("frame truncated inside a message")
        payloads.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} trailing bytes after the last message")
    return Frame(sender=sender, payloads=tuple(payloads))


def encode_goodbye(code: int, reason: str) -> bytes:
    """The record a receiver sends just before it closes (reason cut to fit)."""
    body = bytes([code]) + reason.encode("utf-8", "replace")[: GOODBYE_MAX_SIZE - 1]
    return FRAME_LENGTH.pack(len(body)) + body


def decode_goodbye(record: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a non-empty record from the receiver."""
    return record[0], record[1:].decode("utf-8", "replace")


class RecordReader:
    """Splits a byte stream into records (sans-IO): :meth:`feed` bytes, get the complete
    records (``b""`` for a keepalive). A length over ``max_size`` raises
    :class:`ProtocolError` as soon as the length is read; the reader is then unusable."""

    __slots__ = ("_buffer", "_max", "_need")

    def __init__(self, max_size: int) -> None:
        self._buffer = bytearray()
        self._max = max_size
        self._need = -1  # length of the record being read, -1: its length is not read yet

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        records: list[bytes] = []
        start = 0
        end = len(buffer)
        with memoryview(buffer) as view:
            while True:
                if self._need < 0:
                    if end - start < FRAME_LENGTH.size:
                        break
                    (need,) = FRAME_LENGTH.unpack_from(view, start)
                    if need > self._max:
                        raise ProtocolError(
                            f"record of {need} bytes exceeds the maximum of {self._max}"
                        )
                    start += FRAME_LENGTH.size
                    self._need = need
                if end - start < self._need:
                    break
                records.append(bytes(view[start : start + self._need]))
                start += self._need
                self._need = -1
        if start:
            del buffer[:start]
        return records

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a record."""
        return len(self._buffer)


def parse_address(address: str, default_port: int = 8443) -> tuple[str, int]:
    """Split ``"ip:port"`` / ``"[v6]:port"`` (port defaults to 8443, as microcluster)."""
    host, port_text = address, ""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValidationError(f"invalid address {address!r}")
        host, rest = address[1:end], address[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValidationError(f"invalid address {address!r}")
        port_text = rest[1:]
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    if not host:
        raise ValidationError(f"invalid address {address!r}")
    if not port_text:
        return host, default_port
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5  # not '²'
    if not digits or not 0 < int(port_text) < 65536:
        raise ValidationError(f"invalid port in address {address!r}")
    return host, int(port_text)


# -- configuration, codec, statistics ----------------------------------------


class MessageLike(Protocol):
    """What the transport needs of a Raft message: its source and destination."""

    @property
    def src(self) -> int: ...

    @property
    def dst(self) -> int: ...


M = TypeVar("M", bound=MessageLike)


@dataclass(frozen=True, slots=True)
class WireCodec(Generic[M]):
    """How messages become payloads: normally ``microtrio.raft``'s codec.

    ``errors`` are the exceptions ``decode`` raises on bad input (e.g. ``CodecError``);
    they turn into a dropped connection, never a crash.
    """

    encode: Callable[[M], bytes]
    decode: Callable[[bytes], M]
    errors: tuple[type[Exception], ...] = (ValueError,)


#: The Raft core's own message codec.
RAFT_CODEC: Final[WireCodec[Message]] = WireCodec(encode_message, decode_message, (CodecError,))


def client_certificates(scope: Mapping[str, Any]) -> list[bytes]:
    """DER client certificates from the listener seam's ASGI ``tls`` extension.

    Accepts PEM strings (the ASGI spec's form) or DER bytes; anything else, or a
    missing extension, yields no certificate (and so no trust).
    """
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not chain or isinstance(chain, str | bytes):
        return []
    found: list[bytes] = []
    for cert in chain:
        if isinstance(cert, bytes | bytearray):
            found.append(bytes(cert))
        elif isinstance(cert, str):
            try:
                found.append(ssl.PEM_cert_to_DER_cert(cert))
            except ValueError:
                continue
    return found
