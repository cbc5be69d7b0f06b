"""microtrio: highly available services on a Raft-replicated SQLite database, on trio."""

from __future__ import annotations

from ._errors import (
    BadRequestError as BadRequestError,
    ConflictError as ConflictError,
    CorruptionError as CorruptionError,
    DatabaseNotOpenError as DatabaseNotOpenError,
    DivergenceError as DivergenceError,
    ForbiddenError as ForbiddenError,
    MicrotrioError as MicrotrioError,
    NoLeaderError as NoLeaderError,
    NotFoundError as NotFoundError,
    OutcomeUnknownError as OutcomeUnknownError,
    ProtocolError as ProtocolError,
    RemoteError as RemoteError,
    StateError as StateError,
    UnavailableError as UnavailableError,
    ValidationError as ValidationError,
)

__version__ = "0.1.0"

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
    "OutcomeUnknownError",
    "ProtocolError",
    "RemoteError",
    "StateError",
    "UnavailableError",
    "ValidationError",
    "__version__",
]
