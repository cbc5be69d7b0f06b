"""The Ready batch: everything the application must do after driving the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._messages import Message
from ._types import Entry, HardState, ReadState, Snapshot, SoftState

__all__ = ["Ready"]


@final
@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work, handled strictly in this order:

    1. ``snapshot`` (if any): persist it and install it into the state machine; the durable log
       is discarded up to it.
    2. ``entries``: persist them, first dropping any durable entries at index >=
       ``entries[0].index`` (a conflicting suffix is being replaced); then ``hard_state``.
    3. ``messages``: send them (only now, after step 1-2 are durable).
    4. ``committed_entries``: apply them in order; serve ``read_states`` once applied.
    5. ``RaftNode.advance(ready)``.
    """

    soft_state: SoftState
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
