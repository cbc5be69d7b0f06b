"""The nemesis: seeded schedules of faults, and the task that inflicts them on a cluster.

Theory of operation
-------------------

:func:`generate_schedule` turns a seed and a few parameters into a :class:`Schedule`: a list of
:class:`Step`, each a fault with an offset from the start of the run and a duration. Faults do
not overlap: each is healed (``stop``) before a quiet gap and the next one. Every random
choice (which fault, which members, how long) is made here, from ``random.Random(seed)``, so
the same seed and parameters give the same schedule; the seed is logged and stored in the
schedule (and in the run's report) so that a failing run can be replayed. Only what cannot
be known in advance is resolved when the step runs: *the leader* (for ``partition-leader``
and ``kill-leader``) and the target of a leadership transfer (the first of the step's
candidates that is not the leader then).

Partitions are sets of blocked *directed* links ``(src, dst)``: ``src`` cannot reach ``dst``.
A symmetric cut between groups blocks both directions; ``partition-asymmetric`` blocks one.
``delay`` and ``loss`` act on every Raft link; their amount (:data:`DELAY_RANGE` seconds,
:data:`LOSS_RANGE` probability) is drawn from the seed too.

:func:`run_schedule` runs a schedule against a :class:`NemesisExecutor` (implemented by the
campaign runner over real processes, network namespaces or proxies) and records each start
and stop in the run's :class:`~._history.Recorder` under process :data:`~._history.NEMESIS`.
An executor failure (a :class:`~microtrio.MicrotrioError`) is recorded as ``info`` and the
schedule goes on. When the run is cancelled, the fault in force is healed, shielded and
under a deadline.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

import trio

from .._errors import MicrotrioError, ValidationError
from ._history import NEMESIS, Recorder

__all__ = [
    "ALL_FAULTS",
    "DELAY_RANGE",
    "LOSS_RANGE",
    "FaultKind",
    "NemesisExecutor",
    "Schedule",
    "Step",
    "asymmetric_links",
    "bridge_links",
    "generate_schedule",
    "partition_links",
    "run_schedule",
]

logger = logging.getLogger("microtrio.testing.nemesis")

Link = tuple[str, str]


class FaultKind(enum.StrEnum):
    PARTITION_MAJORITY = "partition-majority"  # a random minority cut off from the majority
    PARTITION_LEADER = "partition-leader"  # the leader (at run time) isolated
    PARTITION_BRIDGE = "partition-bridge"  # two halves that only one member joins
    PARTITION_ASYMMETRIC = "partition-asymmetric"  # a member hears nobody, but is heard
    KILL = "kill"  # kill -9 of random members (a minority), started again at the end
    KILL_LEADER = "kill-leader"  # kill -9 of the leader, started again at the end
    PAUSE = "pause"  # SIGSTOP of random members (a minority), SIGCONT at the end
    RESTART = "restart"  # a clean shutdown of a member, started again at the end
    MEMBERSHIP = "membership"  # a member removed from the cluster, joins again at the end
    TRANSFER = "transfer-leadership"  # the leader hands over to another member
    DELAY = "delay"  # every Raft message delayed (``Step.amount`` seconds)
    LOSS = "loss"  # every Raft message lost with probability ``Step.amount``


ALL_FAULTS: Final = tuple(FaultKind)
DELAY_RANGE: Final = (0.01, 0.2)  # seconds added to every Raft message
LOSS_RANGE: Final = (0.05, 0.35)  # probability that a Raft message is lost

_RUNTIME_LEADER: Final = frozenset({FaultKind.PARTITION_LEADER, FaultKind.KILL_LEADER})


class NemesisExecutor(Protocol):
    """What the nemesis needs from a cluster under test; members are named by their names.

    Each method returns when the action is done (or raises a ``MicrotrioError``).
    """

    async def leader(self) -> str | None:
        """The current leader, if one is known."""
        ...

    async def partition(self, blocked: frozenset[Link]) -> None:
        """Block exactly these directed links (replacing any earlier partition)."""
        ...

    async def heal(self) -> None:
        """Unblock every link."""
        ...

    async def kill(self, member: str) -> None:
        """``kill -9`` the member's process."""
        ...

    async def start(self, member: str) -> None:
        """Start a killed or stopped member again (same state directory)."""
        ...

    async def pause(self, member: str) -> None:
        """``SIGSTOP`` the member's process."""
        ...

    async def resume(self, member: str) -> None:
        """``SIGCONT`` the member's process."""
        ...

    async def stop(self, member: str) -> None:
        """Shut the member down cleanly (it hands leadership over first)."""
        ...

    async def remove(self, member: str) -> None:
        """Remove the member from the cluster."""
        ...

    async def rejoin(self, member: str) -> None:
        """Let a removed member join again (with a fresh token)."""
        ...

    async def transfer_leadership(self, to: str) -> None:
        """Ask the leader to hand leadership to ``to``."""
        ...

    async def degrade(self, *, delay: float, drop: float) -> None:
        """Delay every Raft message by ``delay`` seconds and lose it with probability
        ``drop`` (on every link, until :meth:`heal`)."""
        ...


# --- partitions as blocked links ------------------------------------------------------------


def partition_links(*groups: Sequence[str]) -> frozenset[Link]:
    """Both directions of every link between members of different groups."""
    blocked = set()
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            for x in a:
                for y in b:
                    blocked.add((x, y))
                    blocked.add((y, x))
    return frozenset(blocked)


def bridge_links(left: Sequence[str], right: Sequence[str]) -> frozenset[Link]:
    """``left`` and ``right`` cut apart; members in neither (the bridge) see everyone."""
    return partition_links(left, right)


def asymmetric_links(deaf: str, members: Sequence[str]) -> frozenset[Link]:
    """Nothing reaches ``deaf``; what it sends still arrives."""
    return frozenset((m, deaf) for m in members if m != deaf)


# --- schedules ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Step:
    """One fault: ``at`` seconds after the start, in force for ``duration`` seconds.

    ``members`` are the members the fault acts on (for partitions: ``groups`` are the sides;
    for a transfer: the candidate targets in order). Empty for faults on the leader, which is
    only known when the step runs. ``amount``: the delay (seconds) or loss probability.
    """

    at: float
    duration: float
    fault: FaultKind
    members: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    amount: float = 0.0

    def to_json(self) -> dict[str, Any]:
        found = {
            "at": round(self.at, 3),
            "duration": round(self.duration, 3),
            "fault": self.fault.value,
            "members": list(self.members),
            "groups": [list(g) for g in self.groups],
        }
        if self.amount:
            found["amount"] = round(self.amount, 3)
        return found


@final
@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    members: tuple[str, ...]
    steps: tuple[Step, ...]

    def describe(self) -> str:
        """A readable listing, starting with the seed to replay it."""
        lines = [f"nemesis seed={self.seed} members={','.join(self.members)}"]
        for s in self.steps:
            who = " | ".join(",".join(g) for g in s.groups) or ",".join(s.members) or "<leader>"
            if s.fault is FaultKind.DELAY:
                who = f"every link +{s.amount * 1000:.0f} ms"
            elif s.fault is FaultKind.LOSS:
                who = f"every link {s.amount:.0%} lost"
            lines.append(f"  t+{s.at:7.2f}s for {s.duration:5.2f}s  {s.fault.value:22} {who}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "members": list(self.members),
            "steps": [s.to_json() for s in self.steps],
        }


def generate_schedule(
    members: Sequence[str],
    *,
    seed: int | None = None,
    duration: float = 60.0,
    faults: Sequence[FaultKind] = ALL_FAULTS,
    fault_time: tuple[float, float] = (2.0, 6.0),
    quiet_time: tuple[float, float] = (1.0, 4.0),
) -> Schedule:
    """A random schedule of non-overlapping faults within ``duration`` seconds.

    ``fault_time`` and ``quiet_time`` are the (min, max) seconds a fault lasts and the gap
    before each one. With ``seed=None`` a fresh seed is drawn; it is logged either way.
    """
    if len(members) < 2 or len(set(members)) != len(members):
        raise ValidationError("a nemesis needs two or more distinct members")
    if not faults:
        raise ValidationError("no fault kinds enabled")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    logger.info("nemesis schedule seed=%d members=%d duration=%.1fs", seed, len(members), duration)
    rng = random.Random(seed)
    names = tuple(members)
    kinds = tuple(FaultKind(f) for f in faults)
    steps: list[Step] = []
    t = rng.uniform(*quiet_time)
    while True:
        kind = rng.choice(kinds)
        length = 0.0 if kind is FaultKind.TRANSFER else rng.uniform(*fault_time)
        if t + length > duration:
            break
        steps.append(_make_step(rng, kind, names, t, length))
        t += length + rng.uniform(*quiet_time)
    return Schedule(seed, names, tuple(steps))


def _make_step(
    rng: random.Random, kind: FaultKind, names: tuple[str, ...], at: float, length: float
) -> Step:
    n = len(names)
    minority = max(1, (n - 1) // 2)
    shuffled = list(names)
    rng.shuffle(shuffled)
    if kind is FaultKind.PARTITION_MAJORITY:
        return Step(at, length, kind, (), (tuple(shuffled[:minority]), tuple(shuffled[minority:])))
    if kind is FaultKind.PARTITION_BRIDGE:
        if n < 3:
            return Step(
                at, length, FaultKind.PARTITION_MAJORITY, (), ((shuffled[0],), tuple(shuffled[1:]))
            )
        bridge, rest = shuffled[0], shuffled[1:]
        half = len(rest) // 2
        return Step(at, length, kind, (bridge,), (tuple(rest[:half]), tuple(rest[half:])))
    if kind is FaultKind.PARTITION_ASYMMETRIC:
        return Step(at, length, kind, (shuffled[0],))
    if kind in (FaultKind.KILL, FaultKind.PAUSE):
        return Step(at, length, kind, tuple(shuffled[: rng.randint(1, minority)]))
    if kind in (FaultKind.RESTART, FaultKind.MEMBERSHIP):
        return Step(at, length, kind, (shuffled[0],))
    if kind is FaultKind.TRANSFER:
        return Step(at, 0.0, kind, tuple(shuffled))
    if kind is FaultKind.DELAY:
        return Step(at, length, kind, amount=round(rng.uniform(*DELAY_RANGE), 3))
    if kind is FaultKind.LOSS:
        return Step(at, length, kind, amount=round(rng.uniform(*LOSS_RANGE), 3))
    return Step(at, length, kind)  # on the leader, resolved when the step runs


# --- running a schedule ---------------------------------------------------------------------


async def _targets(step: Step, ex: NemesisExecutor) -> list[str]:
    """The members a step acts on, resolving the leader where the step needs it."""
    if step.fault in _RUNTIME_LEADER or step.fault is FaultKind.TRANSFER:
        leader = await ex.leader()
        if leader is None:
            raise ValidationError("no leader known")
        if step.fault is FaultKind.TRANSFER:
            to = next((m for m in step.members if m != leader), None)
            if to is None:
                raise ValidationError("no member to transfer leadership to")
            return [to]
        return [leader]
    return list(step.members)


async def _inflict(
    step: Step, ex: NemesisExecutor, names: tuple[str, ...], targets: list[str]
) -> None:
    kind = step.fault
    if kind is FaultKind.PARTITION_LEADER:
        await ex.partition(partition_links(targets, [m for m in names if m != targets[0]]))
    elif kind in (FaultKind.PARTITION_MAJORITY, FaultKind.PARTITION_BRIDGE):
        await ex.partition(partition_links(*step.groups))
    elif kind is FaultKind.PARTITION_ASYMMETRIC:
        await ex.partition(asymmetric_links(targets[0], names))
    elif kind in (FaultKind.KILL, FaultKind.KILL_LEADER):
        for m in targets:
            await ex.kill(m)
    elif kind is FaultKind.PAUSE:
        for m in targets:
            await ex.pause(m)
    elif kind is FaultKind.RESTART:
        await ex.stop(targets[0])
    elif kind is FaultKind.MEMBERSHIP:
        await ex.remove(targets[0])
    elif kind is FaultKind.TRANSFER:
        await ex.transfer_leadership(targets[0])
    elif kind is FaultKind.DELAY:
        await ex.degrade(delay=step.amount, drop=0.0)
    elif kind is FaultKind.LOSS:
        await ex.degrade(delay=0.0, drop=step.amount)


async def _repair(kind: FaultKind, targets: Sequence[str], ex: NemesisExecutor) -> None:
    """Undo a fault; every member is tried even if one fails (the first error is raised)."""
    if kind.value.startswith("partition-") or kind in (FaultKind.DELAY, FaultKind.LOSS):
        await ex.heal()
        return
    undo: dict[FaultKind, Callable[[str], Awaitable[None]]] = {
        FaultKind.KILL: ex.start,
        FaultKind.KILL_LEADER: ex.start,
        FaultKind.RESTART: ex.start,
        FaultKind.PAUSE: ex.resume,
        FaultKind.MEMBERSHIP: ex.rejoin,
    }
    action = undo.get(kind)
    if action is None:
        return
    errors: list[MicrotrioError] = []
    for m in targets:
        try:
            await action(m)
        except MicrotrioError as exc:
            logger.warning("nemesis: undoing %s on %s failed: %s", kind.value, m, exc)
            errors.append(exc)
    if errors:
        raise errors[0]


async def run_schedule(
    schedule: Schedule,
    executor: NemesisExecutor,
    recorder: Recorder,
    *,
    heal_timeout: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Inflict the schedule's faults, starting now; returns after the last one is healed."""
    t0 = trio.current_time()
    recorder.set_meta("nemesis", schedule.to_json())
    task_status.started()
    for ident, step in enumerate(schedule.steps):
        await trio.sleep_until(t0 + step.at)
        value = {"fault": step.fault.value, "id": ident}
        inv = recorder.invoke(NEMESIS, "start", value=value)
        targets: list[str] = []
        try:
            try:
                targets = await _targets(step, executor)
                await _inflict(step, executor, schedule.members, targets)
            except MicrotrioError as exc:
                # It may have half happened (one of two kills): it is undone right away.
                logger.warning("nemesis: %s failed to start: %s", step.fault.value, exc)
                recorder.info(inv, str(exc))
            else:
                detail = {"members": targets, "groups": [list(g) for g in step.groups]}
                recorder.ok(inv, {**value, "detail": detail})
                await trio.sleep(step.duration)
        finally:
            await _stop(step.fault, targets, executor, recorder, value, heal_timeout)


async def _stop(
    kind: FaultKind,
    targets: list[str],
    executor: NemesisExecutor,
    recorder: Recorder,
    value: dict[str, Any],
    heal_timeout: float,
) -> None:
    with trio.move_on_after(heal_timeout) as cs:
        cs.shield = True
        stop = recorder.invoke(NEMESIS, "stop", value=value)
        try:
            await _repair(kind, targets, executor)
        except MicrotrioError as exc:
            logger.warning("nemesis: healing %s failed: %s", kind.value, exc)
            recorder.info(stop, str(exc))
        else:
            recorder.ok(stop, value)
    if cs.cancelled_caught:
        logger.error("nemesis: healing %s timed out", kind.value)
