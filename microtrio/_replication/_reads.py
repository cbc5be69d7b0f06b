"""ReadIndex batching for one member's driver (continuous batching, as etcd's read loop).

Concurrent callers share one ReadIndex request (one heartbeat round on the leader, one round
trip from a follower), and at most one request is in flight per member: callers that arrive
while one is in flight form the next batch, handed to the node when the current one is
answered, fails, or is abandoned by all its callers. A caller joins a batch only before the
node takes its read point, so the read point always comes after every caller of its batch
arrived, as linearizability requires.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import final

import trio

from .._errors import UnavailableError
from ..raft import NotLeaderError, RaftNode, ReadState
from ._reply import Reply

__all__ = ["ReadIndexBatcher"]

#: Queues ``action(node)`` for the driver task without waiting; raises ``trio.WouldBlock``
#: (inbox full) or ``trio.ClosedResourceError`` (driver stopped).
Submit = Callable[[Callable[[RaftNode], None]], None]


@final
class _ReadBatch:
    """Callers sharing one ReadIndex request (``ctx``) and its reply."""

    __slots__ = ("ctx", "reply", "waiters")

    def __init__(self, ctx: bytes) -> None:
        self.ctx = ctx
        self.reply: Reply[int] = Reply()
        self.waiters = 0


@final
class ReadIndexBatcher:
    """The ReadIndex requests of one member (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        *,
        rng: random.Random,
        submit: Submit,
        stopped: Callable[[], bool],
        name: str,
    ) -> None:
        self._id = node_id
        self._rng = rng
        self._submit = submit
        self._stopped = stopped
        self._name = name
        self._reads: dict[bytes, Reply[int]] = {}
        self._next: _ReadBatch | None = None  # callers waiting for the next ReadIndex
        self._inflight: _ReadBatch | None = None  # the one handed to the node

    async def read_index(self) -> int:
        """A linearizable read point; raises NotLeaderError when no leader is known and
        waits forever if the request is lost (callers bound and retry)."""
        batch = self._next
        if batch is None:
            ctx = self._rng.getrandbits(64).to_bytes(8, "big") + self._id.to_bytes(8, "big")
            batch = self._next = _ReadBatch(ctx)
            self._reads[ctx] = batch.reply
            if self._inflight is None:
                self._issue(batch)
        batch.waiters += 1
        try:
            return await batch.reply.wait()
        finally:
            batch.waiters -= 1
            if not batch.waiters:
                self._reads.pop(batch.ctx, None)
                if self._next is batch:
                    self._next = None
                self._done(batch)  # all its callers gave up: do not hold the next back

    def answered(self, read_states: Iterable[ReadState]) -> None:
        """The node answered read points (in the driver task, from a Ready)."""
        for rs in read_states:
            reply = self._reads.get(rs.ctx)
            if reply is not None:
                reply.set(rs.index)
            inflight = self._inflight
            if inflight is not None and inflight.ctx == rs.ctx:
                self._done(inflight)

    def fail_all(self, error: BaseException) -> None:
        for reply in self._reads.values():
            reply.fail(error)

    def _done(self, batch: _ReadBatch) -> None:
        """``batch`` is answered (or failed, or abandoned): hand the next batch over."""
        if self._inflight is not batch:
            return
        self._inflight = None
        pending = self._next
        if pending is not None and not self._stopped():
            self._issue(pending)

    def _issue(self, batch: _ReadBatch) -> None:
        """Queue the batch's ReadIndex behind everything already in the driver's inbox."""
        self._inflight = batch

        def issue(node: RaftNode) -> None:
            if self._next is batch:
                self._next = None  # later callers start the next batch
            try:
                node.read_index(batch.ctx)
            except NotLeaderError as exc:
                batch.reply.fail(exc)
                self._done(batch)
                raise

        try:
            self._submit(issue)
        except (trio.WouldBlock, trio.ClosedResourceError):
            # a full inbox or a stopped driver: refuse the batch (the committer retries)
            if self._next is batch:
                self._next = None
            self._inflight = None
            stopped = self._stopped()
            error = UnavailableError(f"{self._name}: raft driver stopped") if stopped else None
            batch.reply.fail(error if error is not None else NotLeaderError(0))
