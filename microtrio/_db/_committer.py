"""The seam between the database and replication.

A :class:`Committer` takes one encoded write batch (a payload), gets it committed
(replicated by Raft, or trivially for a single member) and returns once the
local :class:`~microtrio._db._apply.Applier` has applied it. The Raft committer
lives in the replication layer and is built by a factory that receives the
Applier, so that committed entries of every origin are applied in log order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, final

import trio

if TYPE_CHECKING:
    from ._apply import Applier

__all__ = ["Committer", "LocalCommitter"]


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
