"""One connection of the Raft channel: what the transport's two sides do on a stream.

:class:`Link` is an outbound connection (the sender's: its stream, the lock its two
writers share, the reader of the receiver's records and the pong event); :class:`Inbound`
an accepted one. :func:`wait_welcome` and :func:`refuse_stream` are the two ends of the
receiver's verdict (see :mod:`._frames` for the records), :func:`map_link_error` maps what
a failed link raises to our errors. :mod:`._transport` is the rest.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Final

import trio

from .._errors import ForbiddenError, MicrotrioError, ProtocolError, UnavailableError
from .._nowait import take
from .._tls import TLSStream
from ._frames import (
    GOODBYE_FORBIDDEN,
    GOODBYE_GOING_AWAY,
    RAFT_ALPN,
    RecordReader,
    decode_goodbye,
    encode_goodbye,
)

__all__ = [
    "RECEIVE_SIZE",
    "Inbound",
    "Link",
    "goodbye_error",
    "leaves",
    "map_link_error",
    "raft_client_context",
    "refuse_stream",
    "remote_address",
    "wait_welcome",
]

#: How much one read of a stream asks for.
RECEIVE_SIZE: Final = 64 * 1024
#: How long a closing receiver keeps reading (and discarding) after its goodbye, so the
#: goodbye is not lost to a reset caused by unread data.
_GOODBYE_LINGER: Final = 1.0


class Link:
    """An outbound connection: its stream and the reader of what the receiver sends, the
    lock shared by the two writers (the pump and the keepalive), and the event the watcher
    sets when a pong arrives."""

    __slots__ = ("lock", "pong", "reader", "stream")

    def __init__(self, stream: TLSStream, reader: RecordReader) -> None:
        self.stream = stream
        self.reader = reader
        self.lock = trio.StrictFIFOLock()
        self.pong = trio.Event()

    async def send(self, data: bytes) -> None:
        await take(self.lock)  # no checkpoint when free (nearly always): send_all checkpoints
        try:
            await self.stream.send_all(data)
        finally:
            self.lock.release()


class Inbound:
    """An inbound connection: its stream, and for the idle check, a counter of the receive
    loop's steps (a read started or ended) and whether it is waiting for bytes now."""

    __slots__ = ("steps", "stream", "waiting")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.steps = 0
        self.waiting = False


async def refuse_stream(stream: trio.abc.Stream, code: int, reason: str) -> None:
    """Say goodbye (``code``, ``reason``) on a Raft channel connection before it is closed,
    then read and discard what the client still sends until it closes (at most a second):
    closing a socket with unread data resets the connection, and could lose the goodbye."""
    with trio.move_on_after(_GOODBYE_LINGER):
        try:
            await stream.send_all(encode_goodbye(code, reason))
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def remote_address(stream: trio.abc.Stream) -> str:
    """The remote address of a stream, for log lines."""
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"
    return f"{host}:{port}"


def raft_client_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` (the transport's own) offering the Raft protocol, and only it, by ALPN."""
    context.set_alpn_protocols([RAFT_ALPN])
    return context


async def wait_welcome(stream: trio.abc.Stream, reader: RecordReader) -> None:
    """The receiver's first record says whether it accepted us: empty (welcome), or a
    goodbye. Nothing is sent before it, so a refused sender loses nothing."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise UnavailableError("closed by the peer before accepting the raft channel")
        records = reader.feed(data)
        if records:
            if records[0]:
                raise goodbye_error(records[0])
            return


def goodbye_error(record: bytes) -> MicrotrioError:
    code, reason = decode_goodbye(record)
    if code == GOODBYE_FORBIDDEN:
        return ForbiddenError(f"the peer does not trust our certificate: {reason}")
    if code == GOODBYE_GOING_AWAY:
        return UnavailableError(f"the peer closed the raft channel: {reason}")
    return ProtocolError(f"the peer closed the raft channel: {reason}")


# -- error mapping at the seam ----------------------------------------------------


_LINK_ERRORS: Final = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    MicrotrioError,
)


def leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from leaves(sub)
    else:
        yield exc


def map_link_error(exc: BaseException) -> MicrotrioError | None:
    """Our error for a failed link, or None when ``exc`` is not a link failure."""
    found = list(leaves(exc))
    if not found or not all(isinstance(leaf, _LINK_ERRORS) for leaf in found):
        return None
    first = found[0]
    if isinstance(first, MicrotrioError):
        return first
    if isinstance(first, trio.TooSlowError):
        return UnavailableError("connect timed out")
    return UnavailableError(f"link failed: {first!r}")
