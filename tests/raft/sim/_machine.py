"""The simulated durable storage and the replicated state machine (registers + lists).

:class:`DurableStore` is what survives a crash: exactly what the driver persisted from each
``Ready`` (snapshot, entries, hard state) before sending that ``Ready``'s messages.
:class:`KvMachine` is volatile: it is rebuilt after a restart from the snapshot and the
committed entries the node hands out again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from microtrio.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    PersistedState,
    Snapshot,
    decode_conf_state,
    encode_conf_state,
)


@dataclass(frozen=True, slots=True)
class Command:
    """One client operation as carried in a NORMAL log entry."""

    op_id: int
    kind: str  # "w" write, "cas", "r" read register, "a" append, "rl" read list
    key: str
    value: int | None = None
    expected: int | None = None

    def encode(self) -> bytes:
        return json.dumps(
            [self.op_id, self.kind, self.key, self.value, self.expected], separators=(",", ":")
        ).encode()

    @staticmethod
    def decode(data: bytes) -> Command:
        op_id, kind, key, value, expected = json.loads(data)
        return Command(op_id, kind, key, value, expected)


@dataclass(slots=True)
class DurableStore:
    """One node's disk."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)  # contiguous, after the snapshot

    @staticmethod
    def from_persisted(p: PersistedState | None) -> DurableStore:
        if p is None:
            return DurableStore()
        return DurableStore(p.hard_state, p.snapshot, list(p.entries))

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def term_at(self, index: int) -> int:
        """Term of ``index`` (-1 if unknown / not held)."""
        if self.snapshot is not None and index == self.snapshot.meta.index:
            return self.snapshot.meta.term
        if index == 0:
            return 0
        off = index - self.snapshot_index - 1
        if 0 <= off < len(self.entries):
            return self.entries[off].term
        return -1

    def install_snapshot(self, snap: Snapshot) -> None:
        if snap.meta.index <= self.snapshot_index:
            return
        keep = [e for e in self.entries if e.index > snap.meta.index]
        if keep and self.term_at(snap.meta.index) == snap.meta.term:
            self.entries = keep
        else:
            self.entries = []
        self.snapshot = snap

    def append(self, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        first = entries[0].index
        base = self.snapshot_index
        if first <= base:
            entries = tuple(e for e in entries if e.index > base)
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise AssertionError(
                f"persisting entries from {first} leaves a gap after {self.last_index()}"
            )
        del self.entries[first - base - 1 :]
        self.entries.extend(entries)

    def compact(self, snap: Snapshot) -> None:
        """The state machine took a snapshot at an applied index: log before it may go."""
        if snap.meta.index <= self.snapshot_index:
            return
        self.entries = [e for e in self.entries if e.index > snap.meta.index]
        self.snapshot = snap


@dataclass(slots=True)
class KvMachine:
    """Registers (``r*`` keys) and append-only lists (``l*`` keys), plus the membership the
    log has applied so far."""

    applied: int = 0
    registers: dict[str, int | None] = field(default_factory=dict)
    lists: dict[str, list[int]] = field(default_factory=dict)
    conf: ConfState = ConfState()

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry; returns the client-visible output of a command."""
        self.applied = entry.index
        if entry.type == EntryType.CONF_CHANGE:
            self.conf = decode_conf_state(entry.data)
            return None
        if entry.type != EntryType.NORMAL or not entry.data:
            return None
        cmd = Command.decode(entry.data)
        if cmd.kind == "w":
            self.registers[cmd.key] = cmd.value
            return None
        if cmd.kind == "cas":
            if self.registers.get(cmd.key) == cmd.expected:
                self.registers[cmd.key] = cmd.value
                return True
            return False
        if cmd.kind == "r":
            return self.registers.get(cmd.key)
        if cmd.kind == "a":
            assert cmd.value is not None
            self.lists.setdefault(cmd.key, []).append(cmd.value)
            return None
        if cmd.kind == "rl":
            return tuple(self.lists.get(cmd.key, ()))
        raise AssertionError(f"unknown command {cmd!r}")

    def snapshot_data(self) -> bytes:
        return json.dumps(
            {
                "applied": self.applied,
                "registers": self.registers,
                "lists": self.lists,
                "conf": encode_conf_state(self.conf).hex(),
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def restore(data: bytes) -> KvMachine:
        d = json.loads(data)
        return KvMachine(
            d["applied"],
            dict(d["registers"]),
            {k: list(v) for k, v in d["lists"].items()},
            decode_conf_state(bytes.fromhex(d["conf"])),
        )
