"""A leader's commit notifications, held back for a moment (lazy commit notifications).

Theory of operation
-------------------

When the leader's commit index moves, the core sends each replicating follower an append
with no entries that asks for no answer (``MsgApp``, ``entries == ()``, ``ack=False``): it
only carries the new commit index. At one write at a time that is a second message per
follower per write, and it wakes every follower a second time; the next write's append
carries the same commit index anyway. So the driver holds these notifications here instead
of sending them:

* the latest one per follower is kept (a later one carries a commit index at least as new);
* a held one is dropped once any append to the same follower leaves that lets it learn at
  least as much (:meth:`CommitHold.sending`; a follower commits ``min(commit, last new
  index)`` of an append, so that is what is compared);
* whatever is still held goes out once the oldest held one waited ``delay`` seconds
  (:attr:`CommitHold.deadline`, :meth:`CommitHold.take_all`), and a follower's held one
  goes out at once ahead of a read point or a statement request's answer sent to it
  (:meth:`CommitHold.sending`): it waits for its own apply to reach the index they carry.

Holding or dropping a message is always safe in Raft (the network may delay or lose it);
only the followers' apply waits, by at most ``delay``. The driver sends notifications at
once, as before, to followers that wait for their own apply of a write they forwarded
(see :mod:`._forwarding`), and drops what is held when it stops leading.

:attr:`CommitHold.deadline` is ``math.inf`` whenever nothing is held, and the driver
empties the hold (:meth:`CommitHold.take_all`) as soon as the deadline passed, so the
deadline it waits for never lies in the past.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeGuard, final

from ..raft import Message, MsgApp, MsgReadIndexResp
from ._wire import ExecuteResult, Wire

__all__ = ["CommitHold", "is_commit_only", "split_commit_only"]


def is_commit_only(msg: Message) -> TypeGuard[MsgApp]:
    """An append that only carries a commit index and wants no answer."""
    return isinstance(msg, MsgApp) and not msg.entries and not msg.ack


def split_commit_only(messages: Sequence[Message]) -> tuple[list[Message], list[MsgApp]]:
    """Split a leader's messages into (now, after the apply): the appends that only move a
    follower's commit index leave after the committed entries are applied here and
    whoever waits for them is woken (or are held, see :class:`CommitHold`).

    Why after the apply: at one write at a time the leader's answer to its client waits for
    the apply, and the apply's first checkpoint would let the sender tasks write those
    appends to their sockets first (a system call that wakes another process each).
    Nothing waits for them that the apply could delay: the followers learn the same commit
    index a few hundred microseconds later at most (the apply runs inline, or in one
    thread hop), and delaying a message is always safe in Raft."""
    now: list[Message] = []
    late: list[MsgApp] = []
    for m in messages:
        if is_commit_only(m):
            late.append(m)
        else:
            now.append(m)
    return now, late


#: Answers after which the receiver waits for its own apply to reach an index they carry.
_WAIT_FOR_APPLY = (MsgReadIndexResp, ExecuteResult)


def _learned_commit(msg: MsgApp) -> int:
    """The commit index a follower that accepts ``msg`` knows afterwards (at least)."""
    return min(msg.commit, msg.prev_index + len(msg.entries))


@final
class CommitHold:
    """The held commit notifications of one leader (see the module docstring)."""

    __slots__ = ("_deadline", "_held", "delay")

    def __init__(self, delay: float) -> None:
        if not (delay > 0 and math.isfinite(delay)):
            raise ValueError(f"a commit hold needs a positive, finite delay, not {delay!r}")
        self.delay = delay
        self._held: dict[int, MsgApp] = {}  # follower id -> its latest notification
        self._deadline = math.inf

    def __len__(self) -> int:
        return len(self._held)

    @property
    def deadline(self) -> float:
        """When the held notifications must leave (``math.inf``: none held)."""
        return self._deadline

    def hold(
        self,
        commits: Sequence[MsgApp],
        sent: Sequence[Message],
        waits: Callable[[int, int], bool],
        now: float,
    ) -> list[MsgApp]:
        """Keep the commit-only appends ``commits`` instead of sending them; return those
        that must leave at once: to a follower that ``waits(follower, commit)`` for its own
        apply, or that is answered a read point in ``sent`` (the Ready's other messages).

        A held one replaces the one held for the same follower. The deadline is the oldest
        held one's: notifications that nothing supersedes still leave every ``delay``."""
        readers = {m.dst for m in sent if isinstance(m, MsgReadIndexResp)}
        prompt: list[MsgApp] = []
        for m in commits:
            if not is_commit_only(m):
                raise ValueError(f"only commit-only appends are held, not {m!r}")
            if m.dst in readers or waits(m.dst, m.commit):
                prompt.append(m)
                continue
            held = self._held.get(m.dst)
            if held is not None and held.term == m.term and m.commit < held.commit:
                continue  # older than the one held: nothing new to tell
            self._held[m.dst] = m
            if self._deadline == math.inf:
                self._deadline = now + self.delay
        return prompt

    def sending(self, messages: Sequence[Wire]) -> Sequence[Wire]:
        """``messages`` leave now: drop the held notifications they make redundant, and
        put a follower's held one ahead of an answer that makes it wait for its own apply
        (a read point, or a statement request's answer with the index to wait for).
        Returns what to send."""
        held = self._held
        if not held:
            return messages
        reads = False
        for m in messages:
            if isinstance(m, MsgApp):
                mine = held.get(m.dst)
                if (
                    mine is not None
                    and m.term >= mine.term
                    and _learned_commit(m) >= _learned_commit(mine)
                ):
                    del held[m.dst]
            elif isinstance(m, _WAIT_FOR_APPLY):
                reads = True
        if reads and held:
            out: list[Wire] = []
            for m in messages:
                if isinstance(m, _WAIT_FOR_APPLY) and m.dst in held:
                    out.append(held.pop(m.dst))
                out.append(m)
            messages = out
        if not held:
            self._deadline = math.inf
        return messages

    def take_all(self) -> list[MsgApp]:
        """Remove and return every held notification."""
        msgs = list(self._held.values())
        self._held.clear()
        self._deadline = math.inf
        return msgs
