"""The simulator must catch deliberately broken Raft variants (which exist only here).

Each variant subclasses RaftNode and breaks one rule; the test runs seeds until a check fails
and asserts that this happens within a bounded number of seeds, and that the failure is the
kind of violation the broken rule leads to. A simulator that passes these variants would be
checking nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator

import pytest
from sim import (
    HistoryViolation,
    LivenessViolation,
    SafetyViolation,
    SimParams,
    run_seed,
)

from microtrio.raft import Config, Entry, PersistedState, RaftNode, Ready


class AlwaysGrantVote(RaftNode):
    """Votes (and pre-votes) for any candidate, however stale its log (breaks 5.4.1)."""

    def _is_log_up_to_date(self, last_index: int, last_term: int) -> bool:
        return True


class CommitOldTermByCounting(RaftNode):
    """Commits any index replicated on a quorum, even from an earlier term (Figure 8)."""

    def _maybe_commit(self) -> bool:
        voters = self.conf.voters
        if not voters:
            return False
        matches = sorted((self.prs[v].match if v in self.prs else 0 for v in voters), reverse=True)
        index = matches[len(voters) // 2]
        if index > self._log.committed and self._log.term(index) is not None:
            self._log.commit_to(index)
            self._after_commit()
            return True
        return False


class CommitWithoutQuorum(RaftNode):
    """Counts one vote too few when committing (a minority commits)."""

    def _maybe_commit(self) -> bool:
        voters = self.conf.voters
        if not voters:
            return False
        matches = sorted((self.prs[v].match if v in self.prs else 0 for v in voters), reverse=True)
        index = matches[max(0, len(voters) // 2 - 1)]
        if index > self._log.committed and self._log.term(index) == self.term:
            self._log.commit_to(index)
            self._after_commit()
            return True
        return False


class ReadWithoutQuorum(RaftNode):
    """Answers ReadIndex at once from its commit index, without confirming that it still
    leads (a deposed leader serves stale reads)."""

    def _leader_read(self, ctx: bytes, requester: int) -> None:
        self._respond_read(self._log.committed, ctx, requester)


class _DoctoredReady(RaftNode):
    """Hands the driver a doctored Ready but advances with the real one (so that the core's
    own bookkeeping stays consistent and only the durability promise is broken)."""

    def __init__(
        self, config: Config, rng: random.Random, persisted: PersistedState | None = None
    ) -> None:
        super().__init__(config, rng, persisted)
        self._real: Ready | None = None

    def doctor(self, rd: Ready) -> Ready:
        raise NotImplementedError

    def ready(self) -> Ready:
        self._real = super().ready()
        return self.doctor(self._real)

    def advance(self, rd: Ready) -> None:
        assert self._real is not None
        super().advance(self._real)


class AckBeforePersist(_DoctoredReady):
    """Hands each Ready's entries to storage one Ready late, while its messages (append
    acknowledgements included) go out at once: a crash loses acknowledged entries."""

    _held: tuple[Entry, ...] = ()

    def doctor(self, rd: Ready) -> Ready:
        now, self._held = self._held, rd.entries
        if rd.snapshot is not None:
            now = ()
        return dataclasses.replace(rd, entries=now)


class VoteNotPersisted(_DoctoredReady):
    """Sends vote grants without making the vote durable: after a restart it votes again."""

    def doctor(self, rd: Ready) -> Ready:
        hs = rd.hard_state
        if hs is not None and hs.vote:
            return dataclasses.replace(rd, hard_state=dataclasses.replace(hs, vote=0))
        return rd


def first_failure(
    params: SimParams, seeds: Iterator[int], budget: int
) -> tuple[int, AssertionError] | None:
    for _, seed in zip(range(budget), seeds, strict=False):
        try:
            run_seed(seed, params)
        except (SafetyViolation, HistoryViolation, LivenessViolation) as exc:
            return seed, exc
    return None


#: A harsher profile for consequence-level hunting: frequent crashes, one entry per append.
CHAOS = SimParams(
    rule_checks=False,
    event_rate=0.2,
    crash_weight=6,
    msg_entries=(1,),
    membership=False,
    compaction=False,
)
#: Crashes only (no partitions): followers that acknowledged and then lost entries.
CRASHY = dataclasses.replace(CHAOS, event_rate=0.3, partitions=False)
SAFETY = (SafetyViolation, HistoryViolation)

CASES = [
    # (variant, profile, seeds tried at most, violations it may cause)
    pytest.param(AlwaysGrantVote, SimParams(), 100, SAFETY, id="vote-any-log"),
    pytest.param(CommitWithoutQuorum, SimParams(), 100, SAFETY, id="minority-commit"),
    pytest.param(ReadWithoutQuorum, SimParams(), 600, (HistoryViolation,), id="stale-read"),
    # Rule-level checks catch these at once...
    pytest.param(CommitOldTermByCounting, SimParams(), 100, SAFETY, id="figure-8-rule"),
    pytest.param(AckBeforePersist, SimParams(), 20, SAFETY, id="ack-early-rule"),
    pytest.param(VoteNotPersisted, SimParams(), 20, SAFETY, id="vote-lost-rule"),
    # ... and without them the damage itself is seen (lost committed entries, two leaders).
    pytest.param(AckBeforePersist, CRASHY, 600, SAFETY, id="ack-early-effect"),
    pytest.param(VoteNotPersisted, CHAOS, 600, SAFETY, id="vote-lost-effect"),
]


@pytest.mark.parametrize(("variant", "profile", "budget", "expected"), CASES)
def test_broken_variant_is_caught(
    variant: type[RaftNode],
    profile: SimParams,
    budget: int,
    expected: tuple[type[AssertionError], ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="microtrio.raft")
    params = dataclasses.replace(profile, factory=variant)
    found = first_failure(params, iter(range(3_000_000, 4_000_000)), budget)
    assert found is not None, f"{variant.__name__} survived {budget} seeds"
    seed, exc = found
    assert isinstance(exc, expected), f"seed {seed}: unexpected {type(exc).__name__}: {exc}"


@pytest.mark.parametrize("profile", [CHAOS, CRASHY], ids=["chaos", "crashy"])
def test_correct_core_passes_the_harsh_profiles(
    profile: SimParams, caplog: pytest.LogCaptureFixture
) -> None:
    """The harsh profiles (rule checks off) do not flag the real core: no false alarms. The
    default profile's seeds run in test_sim.py."""
    caplog.set_level(logging.CRITICAL, logger="microtrio.raft")
    assert first_failure(profile, iter(range(3_000_000, 3_000_060)), 60) is None
