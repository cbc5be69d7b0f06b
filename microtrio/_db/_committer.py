"""The seam between the database and replication.

A :class:`Committer` takes one encoded write batch (a payload), gets it committed
(replicated by Raft, or trivially for a single member) and returns once the
local :class:`~microtrio._db._apply.Applier` has applied it. The Raft committer
lives in the replication layer and is built by a factory that receives the
Applier, so that committed entries of every origin are applied in log order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias, final

import trio

if TYPE_CHECKING:
    from ._apply import Applier

__all__ = ["Committer", "LocalCommitter", "RemoteHandler"]

#: The leader's side of a forwarded statement request: runs the encoded request in the
#: writer's batch and returns (encoded reply, the applied index the caller must wait for).
RemoteHandler: TypeAlias = Callable[[bytes], Awaitable[tuple[bytes, int]]]


class Committer(Protocol):
    """Replicates write batches and fences linearizable reads."""

    async def commit(self, payload: bytes) -> int:
        """Replicate and apply ``payload``; return its log index once applied locally.

        Raises :class:`~microtrio.OutcomeUnknownError` when it cannot tell whether
        the entry committed (leadership lost, timeout), :class:`~microtrio.NoLeaderError`
        when it is known not to have been proposed.
        """
        ...

    async def read_barrier(self) -> None:
        """Return once the local applied index covers everything committed before the call."""
        ...

    async def execute_remote(self, request: bytes) -> bytes | None:
        """On a member that does not lead: send an encoded statement request to the leader
        and return its encoded reply once this member applied the leader's state at the
        time of the answer. None: this member leads (or is alone): run it locally.

        Raises :class:`~microtrio.OutcomeUnknownError` when the request may have run but
        no answer came, :class:`~microtrio.NoLeaderError` when it surely did not run.
        """
        ...

    def serve_remote(self, handler: RemoteHandler) -> None:
        """Run statement requests forwarded by other members with ``handler``."""
        ...


@final
class LocalCommitter:
    """The single-member committer: the entry index is ``applied_index + 1``."""

    def __init__(self, applier: Applier) -> None:
        self._applier = applier
        self._lock = trio.Lock()

    async def commit(self, payload: bytes) -> int:
        async with self._lock:
            index = self._applier.applied_index + 1
            await self._applier.apply(index, payload)
            return index

    async def read_barrier(self) -> None:
        return None

    async def execute_remote(self, request: bytes) -> bytes | None:
        return None

    def serve_remote(self, handler: RemoteHandler) -> None:
        return None
