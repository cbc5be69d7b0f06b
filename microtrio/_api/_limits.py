"""Resource limits of the API listeners (issue 8): one frozen, documented ``Limits``.

Where each limit is enforced
----------------------------
* ``max_connections`` (per listener): our own accept loop in ``_listener`` counts open
  connections; one over the cap is closed at once, before TLS (hypercorn 0.18 has no cap).
* ``max_in_flight`` (per listener): the listener's ASGI wrapper counts HTTP requests being
  answered; one over the cap gets a 503 error envelope without reaching the app. Websocket
  channels (the Raft link) are long-lived and are not counted.
* ``header_timeout``: hypercorn's ``keep_alive_timeout``. Its idle timer runs from the end of
  the TLS handshake (or of the previous response) until a complete request head arrives, so a
  client sending its headers byte by byte (slow loris) is cut off after this many seconds.
* ``max_header_size``: hypercorn's ``h11_max_incomplete_size`` (a larger head: 431/400).
* ``read_timeout``: hypercorn's ``read_timeout``: the longest silence on a connection, even
  while a request is being answered (None, the default: no limit, because a handler may take
  long; slow heads and bodies are bounded by the two timeouts around it). If set, it must
  exceed the Raft link's ping interval.
* ``body_timeout``: Quart's ``BODY_TIMEOUT``: the whole body must arrive within it (408).
* ``handshake_timeout``: the TLS handshake must finish within it.
* ``max_body_size``: a ``Content-Length`` over it is answered 413 before any handler runs;
  a chunked body stops being buffered past it and reading it answers 413 (Quart's
  ``MAX_CONTENT_LENGTH``). Nothing is changed either way.
* ``max_sql_length``: ``POST /core/internal/sql`` with a longer ``query`` answers 400.
* ``max_raft_frame_size`` / ``snapshot_chunk_size``: the Raft transport's frame cap and the
  Raft snapshot chunk: a daemon applies both to its replication (:meth:`Limits.transport_config`
  and :meth:`Limits.raft_config` apply them to other configs). A chunk always fits in a frame
  (checked here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final, TypeVar, final

from .._errors import PayloadTooLargeError, ValidationError

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_OVERHEAD",
    "Limits",
    "PayloadTooLargeError",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB

#: Room left in a Raft frame for the frame header and the message's own fields around a
#: snapshot chunk.
FRAME_OVERHEAD: Final = 64 * KIB

_C = TypeVar("_C")


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener limits; every field has a safe default (see the module docstring)."""

    #: Largest request body, in bytes.
    max_body_size: int = 8 * MIB
    #: Longest SQL text accepted by ``POST /core/internal/sql``, in bytes (UTF-8).
    max_sql_length: int = 1 * MIB
    #: Open connections per listener.
    max_connections: int = 512
    #: HTTP requests being answered at once per listener.
    max_in_flight: int = 128
    #: Seconds a connection may take to send a complete request head (also the keep-alive
    #: idle time between requests).
    header_timeout: float = 5.0
    #: Largest request head (request line and headers), in bytes.
    max_header_size: int = 16 * KIB
    #: Longest silence, in seconds, on a connection (None: no limit).
    read_timeout: float | None = None
    #: Seconds for a whole request body to arrive.
    body_timeout: float = 30.0
    #: Seconds for the TLS handshake.
    handshake_timeout: float = 10.0
    #: Largest Raft transport frame (also the websocket message cap), in bytes.
    max_raft_frame_size: int = 16 * MIB
    #: Bytes of snapshot data per InstallSnapshot chunk.
    snapshot_chunk_size: int = 1 * MIB

    def __post_init__(self) -> None:
        sizes = {
            "max_body_size": self.max_body_size,
            "max_sql_length": self.max_sql_length,
            "max_connections": self.max_connections,
            "max_in_flight": self.max_in_flight,
            "max_header_size": self.max_header_size,
            "max_raft_frame_size": self.max_raft_frame_size,
            "snapshot_chunk_size": self.snapshot_chunk_size,
        }
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"Limits.{name} must be a positive integer, not {value!r}")
        times = {
            "header_timeout": self.header_timeout,
            "read_timeout": 1.0 if self.read_timeout is None else self.read_timeout,
            "body_timeout": self.body_timeout,
            "handshake_timeout": self.handshake_timeout,
        }
        for name, seconds in times.items():
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
                raise ValidationError(f"Limits.{name} must be a positive number, not {seconds!r}")
        if self.snapshot_chunk_size + FRAME_OVERHEAD > self.max_raft_frame_size:
            raise ValidationError(
                f"Limits.snapshot_chunk_size ({self.snapshot_chunk_size}) plus "
                f"{FRAME_OVERHEAD} bytes of overhead must fit in max_raft_frame_size "
                f"({self.max_raft_frame_size})"
            )

    def transport_config(self, base: _C) -> _C:
        """``base`` (a ``TransportConfig``) with ``max_frame_size`` from these limits."""
        return _replace(base, max_frame_size=self.max_raft_frame_size)

    def raft_config(self, base: _C) -> _C:
        """``base`` (a ``microtrio.raft.Config``) with ``snapshot_chunk_size`` from these
        limits."""
        return _replace(base, snapshot_chunk_size=self.snapshot_chunk_size)


def _replace(base: _C, **changes: int) -> _C:
    if not dataclasses.is_dataclass(base) or isinstance(base, type):
        raise TypeError(f"expected a dataclass instance, got {base!r}")
    result: _C = dataclasses.replace(base, **changes)
    return result


DEFAULT_LIMITS: Final = Limits()
