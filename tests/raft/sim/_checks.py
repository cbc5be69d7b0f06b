"""Raft safety properties, checked incrementally while a simulation runs.

Each check is cheap enough to run after every step:

- election safety: at most one leader per term (every observed (term, leader) pair is kept);
- log matching: two durable logs holding an entry with the same index and term hold the same
  entry there and agree on the term of the entry before it, which by induction makes them
  identical up to that index;
- leader completeness: every entry known to be committed is in the log of every leader
  observed afterwards (checked when a node is seen leading a new term, and at the end);
- state machine safety: no two nodes apply different entries at the same index, and each
  node applies indices in order without gaps (a snapshot may jump ahead);
- the commit rule (5.4.2): a leader's commit index only ever advances onto an entry of its own
  term (an older entry is committed indirectly, never by counting replicas);
- durable promises (the Ready contract seen from the wire): when a node sends a message, what
  the message promises is already on its disk: a successful append response acknowledges only
  entries the sender holds durably, a granted vote is durably recorded for that term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from microtrio.raft import Entry, HardState, Message, MsgAppResp, MsgSnapResp, MsgVoteResp


class SafetyViolation(AssertionError):
    """A Raft safety property broke; the message says which and where."""


@dataclass(slots=True)
class SafetyChecker:
    leaders: dict[int, int] = field(default_factory=dict)  # term -> leader id
    # (index, term) -> (entry identity, term of the previous entry or -1 if unknown)
    entries: dict[tuple[int, int], tuple[int, bytes]] = field(default_factory=dict)
    prev_terms: dict[tuple[int, int], int] = field(default_factory=dict)
    committed: dict[int, Entry] = field(default_factory=dict)  # index -> entry, as applied
    applied_by: dict[int, int] = field(default_factory=dict)  # node -> last applied index
    checks: int = 0

    # --- election safety ------------------------------------------------------------------

    def saw_leader(self, term: int, node: int) -> bool:
        """Record that ``node`` leads ``term``; True if this pair is new."""
        self.checks += 1
        other = self.leaders.get(term)
        if other is None:
            self.leaders[term] = node
            return True
        if other != node:
            raise SafetyViolation(
                f"election safety: nodes {other} and {node} both lead term {term}"
            )
        return False

    # --- log matching ---------------------------------------------------------------------

    def saw_log(self, node: int, prev_term: int, entries: Sequence[Entry]) -> None:
        """Record entries a node has just made durable; ``prev_term`` is the term of the entry
        just before ``entries[0]`` in its log (-1 if unknown, e.g. right after a snapshot
        whose term was not given)."""
        self.checks += 1
        for e in entries:
            key = (e.index, e.term)
            ident = (int(e.type), e.data)
            known = self.entries.get(key)
            if known is None:
                self.entries[key] = ident
            elif known != ident:
                raise SafetyViolation(
                    f"log matching: node {node} holds a different entry at index {e.index} "
                    f"term {e.term}: {ident!r} vs {known!r}"
                )
            if prev_term >= 0:
                kp = self.prev_terms.setdefault(key, prev_term)
                if kp != prev_term:
                    raise SafetyViolation(
                        f"log matching: node {node} has entry {e.index}/{e.term} after a term "
                        f"{prev_term} entry; another log has it after a term {kp} entry"
                    )
            prev_term = e.term

    # --- state machine safety -------------------------------------------------------------

    def saw_apply(self, node: int, entry: Entry) -> None:
        self.checks += 1
        last = self.applied_by.get(node, 0)
        if entry.index != last + 1:
            raise SafetyViolation(
                f"state machine safety: node {node} applied index {entry.index} after {last}"
            )
        self.applied_by[node] = entry.index
        known = self.committed.get(entry.index)
        if known is None:
            self.committed[entry.index] = entry
        elif known != entry:
            raise SafetyViolation(
                f"state machine safety: node {node} applied {entry!r} at index {entry.index}, "
                f"another node applied {known!r}"
            )

    def saw_snapshot_restore(self, node: int, index: int) -> None:
        """The node's state machine was replaced by a snapshot at ``index``."""
        self.applied_by[node] = index

    def node_restarted(self, node: int, applied: int) -> None:
        self.applied_by[node] = applied

    # --- leader completeness --------------------------------------------------------------

    def check_leader_log(
        self, node: int, term: int, snapshot_index: int, log: dict[int, Entry]
    ) -> None:
        """``log`` maps index -> entry for the leader's log after its snapshot."""
        self.checks += 1
        for index, entry in self.committed.items():
            if index <= snapshot_index:
                continue
            mine = log.get(index)
            if mine is None or mine.term != entry.term or mine.data != entry.data:
                raise SafetyViolation(
                    f"leader completeness: leader {node} of term {term} lacks committed entry "
                    f"{entry.index}/{entry.term} (has {mine!r})"
                )

    # --- the commit rule and durable promises ---------------------------------------------

    def saw_leader_commit(self, node: int, term: int, old: int, new: int, new_term: int) -> None:
        """A leader's durable commit index moved from ``old`` to ``new`` (term ``new_term``)."""
        self.checks += 1
        if new > old and new_term != term:
            raise SafetyViolation(
                f"commit rule: leader {node} of term {term} committed index {new} of term "
                f"{new_term} by counting"
            )

    def saw_send(self, node: int, msg: Message, hard_state: HardState, durable_last: int) -> None:
        """``node`` sends ``msg`` after persisting; ``durable_last`` is its durable last index
        (log or snapshot)."""
        self.checks += 1
        if isinstance(msg, MsgAppResp) and not msg.reject and msg.index > durable_last:
            raise SafetyViolation(
                f"durability: node {node} acknowledged entries up to {msg.index} while its "
                f"disk holds only up to {durable_last}"
            )
        if isinstance(msg, MsgSnapResp) and msg.done and msg.index > durable_last:
            raise SafetyViolation(
                f"durability: node {node} acknowledged snapshot {msg.index} while its disk "
                f"holds only up to {durable_last}"
            )
        if isinstance(msg, MsgVoteResp) and not msg.reject:
            # A later durable term is fine: the node can never vote in msg.term again.
            same = hard_state.term == msg.term and hard_state.vote == msg.dst
            if hard_state.term < msg.term or (hard_state.term == msg.term and not same):
                raise SafetyViolation(
                    f"durability: node {node} granted its vote to {msg.dst} in term {msg.term} "
                    f"but its disk says term {hard_state.term}, vote {hard_state.vote}"
                )
