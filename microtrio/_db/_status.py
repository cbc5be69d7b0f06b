"""Database status values (reference 6.10, exact strings used in 503 messages)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DatabaseStatus"]


class DatabaseStatus(StrEnum):
    """Lifecycle: not-initialized -> starting -> (waiting) -> online; offline on stop or failure."""

    ONLINE = "Database is online"
    WAITING = "Database is waiting for an upgrade"
    STARTING = "Database is still starting"
    NOT_INITIALIZED = "Database is not yet initialized"
    OFFLINE = "Database is offline"
