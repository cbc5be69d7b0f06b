"""The LXD response envelope (reference 3.1), as pure functions.

Each function returns an :class:`EnvelopeResponse` ``(status, headers, body)`` that any
ASGI layer (Quart, a raw ASGI callable, a test) can send as it is. The one mapping from
exceptions to HTTP status codes lives in :func:`status_for_exception`.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any, NamedTuple

from .._errors import MicrotrioError

__all__ = [
    "EnvelopeResponse",
    "error_from_exception",
    "error_response",
    "failure_response",
    "status_for_exception",
    "status_text",
    "sync_response",
]

logger = logging.getLogger("microtrio.api")

JSON_HEADERS: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
ERROR_HEADERS: tuple[tuple[str, str], ...] = JSON_HEADERS + (("X-Content-Type-Options", "nosniff"),)


class EnvelopeResponse(NamedTuple):
    """An HTTP response: status code, header pairs (str) and the JSON body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def status_text(status: int) -> str:
    """The standard reason phrase for ``status`` (``"Unknown"`` if it has none)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode() + b"\n"


def sync_response(metadata: Any = None) -> EnvelopeResponse:
    """A 200 ``sync`` envelope; ``metadata`` None becomes ``{}`` (empty success)."""
    envelope = {
        "type": "sync",
        "status": "Success",
        "status_code": 200,
        "operation": "",
        "error_code": 0,
        "error": "",
        "metadata": {} if metadata is None else metadata,
    }
    return EnvelopeResponse(200, JSON_HEADERS, _encode(envelope))


def failure_response(metadata: Any = None) -> EnvelopeResponse:
    """An unsuccessful ``sync`` envelope (status ``Failure``, status_code 400)."""
    envelope = {
        "type": "sync",
        "status": "Failure",
        "status_code": 400,
        "operation": "",
        "error_code": 0,
        "error": "",
        "metadata": {} if metadata is None else metadata,
    }
    return EnvelopeResponse(400, JSON_HEADERS, _encode(envelope))


def error_response(status: int, message: str | None = None) -> EnvelopeResponse:
    """An ``error`` envelope with HTTP status ``status``; the message defaults to the
    standard status text. Sets ``X-Content-Type-Options: nosniff``."""
    envelope = {
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": status,
        "error": message if message else status_text(status),
        "metadata": None,
    }
    return EnvelopeResponse(status, ERROR_HEADERS, _encode(envelope))


def status_for_exception(exc: BaseException) -> int:
    """HTTP status for an exception: ``MicrotrioError.status``; anything else 500."""
    if isinstance(exc, MicrotrioError):
        status = exc.status
        if isinstance(status, int) and 400 <= status <= 599:
            return status
    return 500


def error_from_exception(exc: BaseException) -> EnvelopeResponse:
    """The error envelope for ``exc``.

    Our own errors keep their message; an unknown exception is logged with its traceback
    and answered with the generic status text (internals are not leaked to callers).
    """
    status = status_for_exception(exc)
    if isinstance(exc, MicrotrioError):
        return error_response(status, str(exc) or None)
    logger.error("unhandled error in request handler: %r", exc, exc_info=exc)
    return error_response(status)
