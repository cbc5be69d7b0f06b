"""RaftNode (stub; the full implementation follows)."""

from __future__ import annotations

import random

from ._codec import encode_conf_state
from ._types import Config, ConfState, Entry, EntryType, HardState, PersistedState

__all__ = ["RaftNode"]


class RaftNode:
    def __init__(
        self, config: Config, rng: random.Random, persisted: PersistedState | None = None
    ) -> None:
        self.config = config
        self._rng = rng
        self._persisted = persisted


def bootstrap_state(conf: ConfState) -> PersistedState:
    """The persisted state of a brand-new cluster's founding member(s).

    Every founding member must start from this same state: one committed CONF_CHANGE entry
    (term 1, index 1) holding ``conf``. Members that join later start from ``None`` (empty) and
    receive the log from the leader.
    """
    entry = Entry(1, 1, EntryType.CONF_CHANGE, encode_conf_state(conf))
    return PersistedState(HardState(term=1, vote=0, commit=1), None, (entry,))
