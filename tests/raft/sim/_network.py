"""A simulated, seeded network: loss, duplication, reordering, delay and partitions.

Messages are opaque to the network except for their sender and receiver ids. Time is the
simulation's tick counter; a message sent at tick ``t`` is delivered at ``t + delay`` with a
delay drawn from the shared ``random.Random``. Partitions are a set of blocked directed links
checked both when a message is sent and when it would be delivered (a partition that starts
while a message is in flight drops it, as a cut cable would).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Faults:
    """Probabilities per message and the delay range, in ticks."""

    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 0
    max_delay: int = 0

    @staticmethod
    def perfect() -> Faults:
        return Faults()


@dataclass(slots=True)
class Network(Generic[M]):
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    blocked: set[tuple[int, int]] = field(default_factory=set)
    _queue: list[tuple[int, int, int, int, M]] = field(default_factory=list)
    _seq: int = 0
    sent: int = 0
    dropped: int = 0

    # --- sending and delivery -------------------------------------------------------------

    def send(self, now: int, frm: int, to: int, msg: M) -> None:
        self.sent += 1
        if (frm, to) in self.blocked or self.rng.random() < self.faults.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(self.faults.min_delay, self.faults.max_delay)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, frm, to, msg))

    def due(self, now: int) -> list[tuple[int, int, M]]:
        """Pop every message due at or before ``now`` as (from, to, message), shuffled among
        those due at the same time (same-tick reordering)."""
        out: list[tuple[int, int, M]] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, frm, to, msg = heapq.heappop(self._queue)
            if (frm, to) in self.blocked:
                self.dropped += 1
                continue
            out.append((frm, to, msg))
        if len(out) > 1:
            self.rng.shuffle(out)
        return out

    def drop_to(self, node: int) -> None:
        """Forget in-flight messages to a node (it crashed: its sockets are gone)."""
        self._queue = [q for q in self._queue if q[3] != node]
        heapq.heapify(self._queue)

    def in_flight(self) -> int:
        return len(self._queue)

    # --- partitions -----------------------------------------------------------------------

    def heal(self) -> None:
        self.blocked.clear()

    def isolate_groups(self, groups: Iterable[Iterable[int]]) -> None:
        """Symmetric partition: nodes talk only within their group."""
        gs = [set(g) for g in groups]
        for a in gs:
            for b in gs:
                if a is b:
                    continue
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))

    def cut_one_way(self, frm: int, to: int) -> None:
        """Asymmetric partition: ``frm`` cannot reach ``to`` but ``to`` still reaches ``frm``."""
        self.blocked.add((frm, to))

    def bridge(self, left: Iterable[int], right: Iterable[int]) -> None:
        """Two sides that cannot talk to each other; nodes in neither side reach both."""
        self.isolate_groups([left, right])
