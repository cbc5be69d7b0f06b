"""The exception tree of microtrio.

Every error microtrio raises on purpose derives from :class:`MicrotrioError`.
Foreign exceptions (trio, ssl, apsw, httpx, OSError) are mapped to one of these
at the seam where they occur (``raise X(...) from exc``) and never leak upward.

::

    MicrotrioError                      (500)
    ├── BadRequestError                 (400)  malformed JSON, invalid name, bad argument
    │   └── ValidationError             (400)  a value failed validation
    ├── ForbiddenError                  (403)  caller is not trusted
    ├── NotFoundError                   (404)  no such member, token, endpoint
    ├── ConflictError                   (409)  unique constraint, already exists
    ├── NotImplementedMethodError       (501)  method has no handler
    ├── PayloadTooLargeError            (413)  a request body over the listener's limit
    ├── UnavailableError                (503)  not ready, shutting down, DB not open
    │   ├── DatabaseNotOpenError        (503)  message is the database status text
    │   ├── NoLeaderError               (503)  no Raft leader known right now
    │   └── TooManyAttemptsError        (429)  too many failed join admissions from one address
    ├── TimeoutError_                   (504)  an operation ran out of time (outcome known: not done)
    ├── OutcomeUnknownError             (503)  a write may or may not have committed
    ├── StateError                      (500)  the state directory is unusable / corrupt
    │   └── CorruptionError             (500)  checksum or format error in a durable file
    ├── DivergenceError                 (500)  a replica could not apply a committed entry
    ├── RemoteError                     (any)  an error envelope answered by a remote member
    └── ProtocolError                   (400)  a peer broke the wire protocol

Each class carries ``status`` (the HTTP status code used by the envelope).
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConflictError",
    "CorruptionError",
    "DatabaseNotOpenError",
    "DivergenceError",
    "ForbiddenError",
    "MicrotrioError",
    "NoLeaderError",
    "NotFoundError",
    "NotImplementedMethodError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RemoteError",
    "StateError",
    "TimeoutError_",
    "TooManyAttemptsError",
    "UnavailableError",
    "ValidationError",
]


class MicrotrioError(Exception):
    """Root of every error microtrio raises on purpose."""

    status: int = 500


class BadRequestError(MicrotrioError):
    status = 400


class ValidationError(BadRequestError):
    status = 400


class ForbiddenError(MicrotrioError):
    status = 403


class NotFoundError(MicrotrioError):
    status = 404


class ConflictError(MicrotrioError):
    status = 409


class NotImplementedMethodError(MicrotrioError):
    status = 501


class UnavailableError(MicrotrioError):
    status = 503


class DatabaseNotOpenError(UnavailableError):
    status = 503


class NoLeaderError(UnavailableError):
    status = 503


class TooManyAttemptsError(UnavailableError):
    """Too many failed join admissions from one address: try again later."""

    status = 429


class PayloadTooLargeError(MicrotrioError):
    """A request body over the listener's ``Limits.max_body_size``."""

    status = 413


class TimeoutError_(MicrotrioError):  # noqa: N801 - avoid shadowing the builtin
    status = 504


class OutcomeUnknownError(MicrotrioError):
    """A write was sent but whether it committed is unknown (leadership lost, timeout)."""

    status = 503


class StateError(MicrotrioError):
    status = 500


class CorruptionError(StateError):
    status = 500


class DivergenceError(MicrotrioError):
    status = 500


class ProtocolError(MicrotrioError):
    status = 400


class RemoteError(MicrotrioError):
    """An error envelope returned by another member (or our own daemon, seen from a client)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
