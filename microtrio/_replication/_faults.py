"""Fault injection for the Raft peer transport.

A :class:`Faults` object holds per-link rules, keyed by the directed link
``(src, dst)`` between two node ids:

* ``drop``: the probability that a message on the link is lost;
* ``delay``: latency (seconds, trio clock) added to each message on the link;
* ``block``: a partition; nothing gets through (asymmetric partitions are two
  separate links, so ``a -> b`` may be blocked while ``b -> a`` flows).

Rules change at runtime and take effect on the next message. A transport
consults its ``Faults`` in its sender (for the links it sends on) and in its
receiver (for the links it receives on). Each rule is applied exactly once:
every transport *attaches* its node id to the ``Faults`` it uses, and the
receiver applies a rule only when the sending node is not attached (that is,
when the sender is in another process, or uses no ``Faults``). So one
``Faults`` can be shared by every transport of an in-process test cluster, or
each member of a multi-process cluster can have its own, without doubling the
drop rate or the delay.

When no rule is set the transport's cost is one attribute check per batch;
a transport built without ``Faults`` pays nothing at all.

Randomness comes from an injected :class:`random.Random`, so a seeded test
drops the same messages every time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

from .._errors import ValidationError

__all__ = ["DROP", "Faults", "LinkRule"]


@dataclass(frozen=True, slots=True)
class LinkRule:
    """The faults configured on one directed link."""

    drop: float = 0.0
    delay: float = 0.0
    blocked: bool = False

    @property
    def is_noop(self) -> bool:
        return self.drop == 0.0 and self.delay == 0.0 and not self.blocked


_NOOP: Final = LinkRule()

#: Returned by :meth:`Faults.decide` when the message must be lost.
DROP: Final = -1.0


@final
class Faults:
    """Runtime-configurable drop / delay / partition rules per directed link."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._rules: dict[tuple[int, int], LinkRule] = {}
        self._attached: set[int] = set()

    # -- configuration -------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when at least one rule is set."""
        return bool(self._rules)

    def set_link(
        self,
        src: int,
        dst: int,
        *,
        drop: float | None = None,
        delay: float | None = None,
        blocked: bool | None = None,
    ) -> None:
        """Change the rule of link ``src -> dst``; arguments left as None keep their value."""
        old = self._rules.get((src, dst), _NOOP)
        new = LinkRule(
            drop=old.drop if drop is None else drop,
            delay=old.delay if delay is None else delay,
            blocked=old.blocked if blocked is None else blocked,
        )
        if not 0.0 <= new.drop <= 1.0:
            raise ValidationError(f"drop probability must be within [0, 1], got {new.drop!r}")
        if new.delay < 0.0:
            raise ValidationError(f"delay must not be negative, got {new.delay!r}")
        if new.is_noop:
            self._rules.pop((src, dst), None)
        else:
            self._rules[(src, dst)] = new

    def rule(self, src: int, dst: int) -> LinkRule:
        """The rule currently applied on ``src -> dst``."""
        return self._rules.get((src, dst), _NOOP)

    def block(self, src: int, dst: int) -> None:
        """Partition the directed link ``src -> dst``."""
        self.set_link(src, dst, blocked=True)

    def unblock(self, src: int, dst: int) -> None:
        self.set_link(src, dst, blocked=False)

    def partition(self, side_a: Iterable[int], side_b: Iterable[int]) -> None:
        """Block every link between the two sides, in both directions."""
        b_nodes = list(side_b)
        for a in side_a:
            for b in b_nodes:
                self.block(a, b)
                self.block(b, a)

    def isolate(self, node: int, others: Iterable[int]) -> None:
        """Cut ``node`` off from ``others`` in both directions."""
        self.partition([node], others)

    def heal(self) -> None:
        """Remove every partition; drop and delay rules stay."""
        for src, dst in list(self._rules):
            self.unblock(src, dst)

    def clear(self) -> None:
        """Remove every rule."""
        self._rules.clear()

    # -- used by the transport ----------------------------------------------

    def attach(self, node_id: int) -> None:
        """Record that ``node_id``'s sender applies these rules (see module docs)."""
        self._attached.add(node_id)

    def detach(self, node_id: int) -> None:
        self._attached.discard(node_id)

    def applies_on_receive(self, src: int) -> bool:
        """Whether a receiver must apply the rules of links coming from ``src``."""
        return src not in self._attached

    def decide(self, src: int, dst: int) -> float:
        """Fate of one message on ``src -> dst``: :data:`DROP`, or the delay to add."""
        rule = self._rules.get((src, dst))
        if rule is None:
            return 0.0
        if rule.blocked:
            return DROP
        if rule.drop > 0.0 and self._rng.random() < rule.drop:
            return DROP
        return rule.delay
