"""TLS over a trio socket stream with one scheduler pass per operation.

``trio.SSLStream`` is general: it supports renegotiation, several tasks racing on one
operation and transports that are not sockets, and pays for it with an inner lock and a
transport call that each yield to the scheduler, so one ``send_all`` or one
``receive_some`` that has to wait costs two or three scheduler passes. On the write path
of a replicated write (the client's request, the appends, the acks, the response) that was
most of the leader's passes (see docs/benchmarks.md). :class:`TLSStream` does the same job
for what microtrio needs and nothing more:

* the transport is a :class:`trio.SocketStream`; bytes move with non-blocking ``read(2)``
  and ``write(2)`` on its descriptor and trio's ``wait_readable`` / ``wait_writable``;
* TLS 1.3 only (our contexts refuse anything older), so there is no renegotiation: after
  the handshake a receive never needs to send and a send never needs to receive, except
  for the rare post-handshake message (a key update), which is handled;
* one task sends and one task receives at a time (trio's stream contract; a second one
  gets :class:`trio.BusyResourceError`);
* ``https_compatible`` semantics, as we used ``trio.SSLStream``: an EOF without a
  ``close_notify`` reads as a plain EOF, and :meth:`aclose` closes the socket without
  sending one.

An operation checkpoints exactly once: a receive that waits for bytes parks once in
``wait_readable`` (its checkpoint); a receive that finds bytes, and a send whose bytes the
socket takes at once, yield once with ``cancel_shielded_checkpoint``. A receive loses
nothing to cancellation (bytes read from the socket are in the TLS object before any
wait); a send cancelled while its bytes are only partly written breaks the stream, as
with ``trio.SSLStream``.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Final, final

import trio

__all__ = ["TLSStream"]

#: How much one read of the socket asks for (a TLS record is at most about 16 KiB).
_SOCKET_READ: Final = 256 * 1024
#: What ``receive_some()`` without a size returns at most.
_DEFAULT_RECEIVE: Final = 64 * 1024


def _is_eof(exc: BaseException) -> bool:
    # An EOF from the peer without a close_notify ("EOF occurred in violation of protocol").
    return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or (
        isinstance(exc, ssl.SSLError) and "UNEXPECTED_EOF" in str(exc)
    )


@final
class TLSStream(trio.abc.Stream):
    """A TLS connection over ``transport_stream`` (see the module docstring).

    ``server_side`` and ``server_hostname`` are as for :meth:`ssl.SSLContext.wrap_bio`. The
    handshake runs on the first operation or an explicit :meth:`do_handshake`.
    """

    def __init__(
        self,
        transport_stream: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._socket = transport_stream.socket
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._handshook = False
        self._handshake_lock = trio.Lock()
        self._flush_lock = trio.Lock()
        self._sending = False
        self._receiving = False
        self._broken = False
        self._closed = False
        # written before anything else: handshake output held for the first write (see
        # _handshake), or what the socket did not take of a send_nowait
        self._held = b""

    # -- what callers read from the connection ------------------------------------------

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    # -- the stream -------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake (once; later calls only checkpoint). A failure (a refused
        certificate, the peer going away) raises :class:`trio.BrokenResourceError`."""
        self._check_usable()
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        async with self._handshake_lock:
            if not self._handshook:
                await self._handshake()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshook:
                await self.do_handshake()
            if data:
                self._encrypt(data)
            if not await self._flush():
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` would send now (no other send or flush under way,
        nothing waiting to be written, the handshake done, the stream usable)."""
        return not (
            self._sending
            or self._closed
            or self._broken
            or not self._handshook
            or self._held
            or self._outgoing.pending
            or self._flush_lock.locked()
        )

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool | None:
        """Send ``data`` without waiting, when no other send is under way: encrypt it and
        write what the socket takes at once. Returns None when the stream is busy (a send
        or a flush running, bytes waiting, no handshake yet): nothing was done. True: all
        of it was written. False: the socket took part of it; the rest goes out first with
        the next :meth:`send_all` (``send_all(b"")`` writes just that), which the caller
        must make happen. Raises :class:`trio.BrokenResourceError` as :meth:`send_all`.

        No checkpoint: for a caller that must not yield (a loop handing out messages
        that would otherwise wake a sender task for each)."""
        if not self.can_send_nowait():
            return None
        self._encrypt(data)
        out = self._outgoing.read()
        try:
            written = os.write(self._socket.fileno(), out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._broken = True
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        if written == len(out):
            return True
        self._held = out[written:]
        return False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            self._check_usable()
            if self._flush_lock.locked():  # a receive is writing a post-handshake reply
                async with self._flush_lock:
                    return
            await trio.lowlevel.wait_writable(self._socket)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            self._check_usable()
            if max_bytes is None:
                max_bytes = _DEFAULT_RECEIVE
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshook:
                await self.do_handshake()
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the socket (no ``close_notify``: see the module docstring). Tasks blocked
        on the socket get :class:`trio.ClosedResourceError`."""
        self._closed = True
        await self.transport_stream.aclose()

    # -- the machinery ------------------------------------------------------------------

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        """Put ``data`` into the TLS object as records for the peer (a failure breaks the
        stream)."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._broken = True
            raise trio.BrokenResourceError from exc

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("the stream is broken by an earlier failure")

    async def _handshake(self) -> None:
        try:
            while True:
                try:
                    self._ssl.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    # Send the alert that says why (best effort), then fail.
                    await self._flush()
                    raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
                else:
                    if self._ssl.server_side:
                        # What a TLS 1.3 server writes as its handshake ends is session
                        # tickets; a client that is not reading yet could close on them
                        # unread, and its kernel would reset the connection. They go with
                        # the first write instead (as trio.SSLStream does).
                        self._held = self._outgoing.read()
                    else:
                        await self._flush()
                    self._handshook = True
                    return
                await self._flush()
                await self._fill()
        except BaseException:
            self._broken = True
            raise

    async def _receive(self, max_bytes: int) -> bytes:
        yielded = False
        while True:
            data = self._read(max_bytes)
            if self._outgoing.pending:  # a post-handshake reply (a key update)
                yielded = await self._flush() or yielded
            if data is not None:
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            yielded = await self._fill() or yielded

    def _read(self, max_bytes: int) -> bytes | None:
        """What the TLS object has decrypted, up to ``max_bytes`` (whole records that are
        already here are returned together); b"" at EOF; None when it needs bytes."""
        try:
            data = self._ssl.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            if _is_eof(exc):
                return b""
            self._broken = True
            raise trio.BrokenResourceError from exc
        while data and len(data) < max_bytes and self._incoming.pending:
            try:
                more = self._ssl.read(max_bytes - len(data))
            except ssl.SSLError:  # want-read or EOF: the next call sees it
                break
            if not more:
                break
            data += more
        return data

    async def _fill(self) -> bool:
        """Move what the socket has into the TLS object, waiting for it if there is none;
        an EOF is passed on as EOF. Returns whether it waited (a checkpoint)."""
        fd = self._socket.fileno()
        waited = False
        while True:
            try:
                chunk = os.read(fd, _SOCKET_READ)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)
                waited = True
                continue
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            if chunk:
                self._incoming.write(chunk)
            else:
                self._incoming.write_eof()
            return waited

    async def _flush(self) -> bool:
        """Write what the TLS object has for the peer, in order, whoever put it there (a
        send, or a receive answering a post-handshake message). Returns whether it
        yielded. A failure or cancellation with bytes half written breaks the stream."""
        if not (self._outgoing.pending or self._held):
            return False
        yielded = False
        try:
            if self._flush_lock.locked():
                # Another task is writing; it writes our bytes too (they follow its own).
                await self._flush_lock.acquire()
                yielded = True
            else:
                self._flush_lock.acquire_nowait()
            try:
                fd = self._socket.fileno()
                while self._outgoing.pending or self._held:
                    view = memoryview(self._held + self._outgoing.read())
                    self._held = b""
                    while view:
                        try:
                            written = os.write(fd, view)
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(self._socket)
                            yielded = True
                            continue
                        except OSError as exc:
                            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                        view = view[written:]
            finally:
                self._flush_lock.release()
        except BaseException:
            self._broken = True
            raise
        return yielded
