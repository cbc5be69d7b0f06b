"""ReadIndex bookkeeping on the leader (thesis 6.4).

A read request records the commit index at its arrival and a round number; the leader sends a
heartbeat carrying the round. A heartbeat response for round R proves the responder still
followed us after every round <= R started, so it acknowledges all of them. Once a quorum of
voters acknowledged a round, it and every earlier request are released in arrival order.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PendingRead", "ReadOnly"]


class PendingRead:
    __slots__ = ("acks", "ctx", "index", "requester", "round")

    def __init__(self, rnd: int, index: int, ctx: bytes, requester: int) -> None:
        self.round = rnd
        self.index = index
        self.ctx = ctx
        self.requester = requester
        self.acks: set[int] = set()


class ReadOnly:
    __slots__ = ("pending", "round", "waiting")

    def __init__(self) -> None:
        self.round = 0
        self.pending: deque[PendingRead] = deque()
        #: requests that arrived before the leader committed an entry of its term
        self.waiting: list[tuple[bytes, int]] = []

    def add(self, index: int, ctx: bytes, requester: int, self_id: int, voter: bool) -> int:
        """Register a request; return the round number to put into heartbeats."""
        self.round += 1
        read = PendingRead(self.round, index, ctx, requester)
        if voter:
            read.acks.add(self_id)
        self.pending.append(read)
        return self.round

    def new_round(self) -> int:
        """A round for a heartbeat that carries no new read (leader lease bookkeeping)."""
        self.round += 1
        return self.round

    def current_round(self) -> int:
        return self.round if self.pending else 0

    def ack(self, node: int, rnd: int, voters: frozenset[int]) -> list[PendingRead]:
        """Record ``node``'s acknowledgement of ``rnd``; return the requests now released."""
        if rnd == 0 or node not in voters:
            return []
        for read in self.pending:
            if read.round > rnd:
                break
            read.acks.add(node)
        quorum = len(voters) // 2 + 1
        released: list[PendingRead] = []
        last_ok = -1
        for k, read in enumerate(self.pending):
            if read.round > rnd:
                break
            if len(read.acks & voters) >= quorum:
                last_ok = k
        for _ in range(last_ok + 1):
            released.append(self.pending.popleft())
        return released

    def clear(self) -> None:
        self.pending.clear()
        self.waiting.clear()
