"""Errors raised by the Raft core, rooted in microtrio's exception tree.

::

    MicrotrioError
    ├── UnavailableError
    │   ├── NotLeaderError          propose/transfer on a non-leader (``leader_id`` hint, 0 = unknown)
    │   └── ProposalDroppedError    the leader refuses it now (transfer running, ...)
    │       └── ConfChangeInProgressError  another membership change is not committed yet
    ├── BadRequestError
    │   └── RaftUsageError          the core was called wrongly (bad argument, ready twice)
    ├── ProtocolError
    │   └── CodecError              bytes are not a valid encoded message
    └── DivergenceError             a peer asked to rewrite committed entries (a safety bug)
"""

from __future__ import annotations

from .._errors import BadRequestError, ProtocolError, UnavailableError

__all__ = [
    "CodecError",
    "ConfChangeInProgressError",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftUsageError",
]


class NotLeaderError(UnavailableError):
    """This node does not lead; ``leader_id`` is who it believes leads (0 = unknown)."""

    def __init__(self, leader_id: int, message: str = "") -> None:
        super().__init__(message or f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(UnavailableError):
    """The leader cannot take this proposal right now; retrying later may succeed."""


class ConfChangeInProgressError(ProposalDroppedError):
    """A membership change is still uncommitted (one change at a time)."""


class RaftUsageError(BadRequestError):
    """The caller used the core wrongly (invalid argument or call order)."""


class CodecError(ProtocolError):
    """Bytes that are not a valid encoded Raft message (version, type, length)."""
