"""Nemesis schedules: reproducible from the seed, sane shapes, and the runner's bookkeeping."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from microtrio._errors import UnavailableError, ValidationError
from microtrio.testing._history import NEMESIS, Recorder, fault_windows
from microtrio.testing._nemesis import (
    ALL_FAULTS,
    DELAY_RANGE,
    LOSS_RANGE,
    FaultKind,
    Schedule,
    Step,
    asymmetric_links,
    generate_schedule,
    partition_links,
    run_schedule,
)

FIVE = ("m1", "m2", "m3", "m4", "m5")


def test_same_seed_same_schedule_and_seed_is_described() -> None:
    a = generate_schedule(FIVE, seed=1234, duration=120)
    b = generate_schedule(FIVE, seed=1234, duration=120)
    c = generate_schedule(FIVE, seed=1235, duration=120)
    assert a == b and a.steps != c.steps
    assert a.describe().startswith("nemesis seed=1234 ")
    assert a.to_json()["seed"] == 1234


def test_fresh_seed_is_recorded() -> None:
    s = generate_schedule(FIVE, duration=30)
    assert generate_schedule(FIVE, seed=s.seed, duration=30) == s


@pytest.mark.parametrize("members", [FIVE[:3], FIVE])
def test_schedule_shapes(members: tuple[str, ...]) -> None:
    s = generate_schedule(members, seed=7, duration=2000)
    assert {st.fault for st in s.steps} == set(ALL_FAULTS)
    end = 0.0
    minority = (len(members) - 1) // 2
    for st in s.steps:
        assert st.at >= end + 1.0 and st.at + st.duration <= 2000  # no overlap, quiet gap
        end = st.at + st.duration
        if st.fault is FaultKind.PARTITION_MAJORITY:
            small, big = st.groups
            assert len(small) == minority and len(big) == len(members) - minority
        if st.fault is FaultKind.PARTITION_BRIDGE:
            (bridge,) = st.members
            left, right = st.groups
            assert bridge not in left + right and not set(left) & set(right)
            assert len(left) + len(right) + 1 == len(members)
        if st.fault in (FaultKind.KILL, FaultKind.PAUSE):
            assert 1 <= len(st.members) <= minority  # a quorum always survives
        if st.fault is FaultKind.TRANSFER:
            assert st.duration == 0 and sorted(st.members) == sorted(members)
        if st.fault is FaultKind.DELAY:
            assert DELAY_RANGE[0] <= st.amount <= DELAY_RANGE[1]
        elif st.fault is FaultKind.LOSS:
            assert LOSS_RANGE[0] <= st.amount <= LOSS_RANGE[1]
        else:
            assert st.amount == 0.0


def test_partition_link_sets() -> None:
    assert partition_links(["a"], ["b", "c"]) == {
        ("a", "b"),
        ("b", "a"),
        ("a", "c"),
        ("c", "a"),
    }
    assert asymmetric_links("a", ["a", "b", "c"]) == {("b", "a"), ("c", "a")}


def test_schedule_rejects_bad_parameters() -> None:
    with pytest.raises(ValidationError):
        generate_schedule(["a"], seed=1)
    with pytest.raises(ValidationError):
        generate_schedule(["a", "a"], seed=1)
    with pytest.raises(ValidationError):
        generate_schedule(["a", "b"], seed=1, faults=[])


class FakeCluster:
    def __init__(self, leader: str | None = "m1", fail_on: str | None = None) -> None:
        self.calls: list[tuple[float, tuple[object, ...]]] = []
        self._leader = leader
        self.fail_on = fail_on

    def _call(self, *call: object) -> None:
        self.calls.append((trio.current_time(), call))
        if call[0] == self.fail_on:
            raise UnavailableError(f"{call[0]} refused")

    async def leader(self) -> str | None:
        return self._leader

    async def partition(self, blocked: frozenset[tuple[str, str]]) -> None:
        self._call("partition", blocked)

    async def heal(self) -> None:
        self._call("heal")

    async def kill(self, member: str) -> None:
        self._call("kill", member)

    async def start(self, member: str) -> None:
        self._call("start", member)

    async def pause(self, member: str) -> None:
        self._call("pause", member)

    async def resume(self, member: str) -> None:
        self._call("resume", member)

    async def stop(self, member: str) -> None:
        self._call("stop", member)

    async def remove(self, member: str) -> None:
        self._call("remove", member)

    async def rejoin(self, member: str) -> None:
        self._call("rejoin", member)

    async def transfer_leadership(self, to: str) -> None:
        self._call("transfer", to)

    async def degrade(self, *, delay: float, drop: float) -> None:
        self._call("degrade", delay, drop)


THREE = ("m1", "m2", "m3")


def sched(*steps: Step) -> Schedule:
    return Schedule(99, THREE, steps)


async def test_runner_inflicts_and_heals_on_time(autojump_clock: trio.testing.MockClock) -> None:
    s = sched(
        Step(1.0, 2.0, FaultKind.PARTITION_LEADER),
        Step(4.0, 1.0, FaultKind.KILL, ("m2",)),
        Step(6.0, 0.0, FaultKind.TRANSFER, ("m1", "m3", "m2")),
        Step(7.0, 1.0, FaultKind.MEMBERSHIP, ("m3",)),
        Step(9.0, 1.0, FaultKind.PAUSE, ("m2", "m3")),
        Step(11.0, 1.0, FaultKind.DELAY, amount=0.1),
        Step(13.0, 2.0, FaultKind.LOSS, amount=0.25),
    )
    ex = FakeCluster()
    rec = Recorder(trio.current_time)
    t0 = trio.current_time()
    await run_schedule(s, ex, rec)
    calls = [(round(t - t0, 6), *call) for t, call in ex.calls]
    assert calls == [
        (1.0, "partition", partition_links(["m1"], ["m2", "m3"])),
        (3.0, "heal"),
        (4.0, "kill", "m2"),
        (5.0, "start", "m2"),
        (6.0, "transfer", "m3"),  # m1 leads, so the first other candidate
        (7.0, "remove", "m3"),
        (8.0, "rejoin", "m3"),
        (9.0, "pause", "m2"),
        (9.0, "pause", "m3"),
        (10.0, "resume", "m2"),
        (10.0, "resume", "m3"),
        (11.0, "degrade", 0.1, 0.0),
        (12.0, "heal"),
        (13.0, "degrade", 0.0, 0.25),
        (15.0, "heal"),
    ]
    h = rec.history()
    assert h.meta["nemesis"]["seed"] == 99
    windows = fault_windows(h)
    assert [(w.fault, w.start - t0, w.stop - t0) for w in windows if w.stop is not None] == [
        ("partition-leader", 1.0, 3.0),
        ("kill", 4.0, 5.0),
        ("transfer-leadership", 6.0, 6.0),
        ("membership", 7.0, 8.0),
        ("pause", 9.0, 10.0),
        ("delay", 11.0, 12.0),
        ("loss", 13.0, 15.0),
    ]
    assert windows[0].detail["members"] == ["m1"]
    assert all(e.process == NEMESIS for e in h)


async def test_runner_records_failures_and_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    ex = FakeCluster(fail_on="kill")
    rec = Recorder(trio.current_time)
    await run_schedule(
        sched(Step(1.0, 5.0, FaultKind.KILL, ("m2",)), Step(7.0, 1.0, FaultKind.RESTART, ("m3",))),
        ex,
        rec,
    )
    assert [c for _, c in ex.calls] == [
        ("kill", "m2"),
        ("start", "m2"),
        ("stop", "m3"),
        ("start", "m3"),
    ]
    infos = [e for e in rec.history() if e.type.value == "info"]
    assert len(infos) == 1 and "kill refused" in (infos[0].error or "")


async def test_runner_without_leader_skips_leader_faults(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ex = FakeCluster(leader=None)
    rec = Recorder(trio.current_time)
    await run_schedule(sched(Step(1.0, 5.0, FaultKind.KILL_LEADER)), ex, rec)
    assert ex.calls == []
    assert [e.type.value for e in rec.history()] == ["invoke", "info", "invoke", "ok"]


async def test_cancelled_run_heals_the_fault(autojump_clock: trio.testing.MockClock) -> None:
    ex = FakeCluster()
    rec = Recorder(trio.current_time)
    with trio.move_on_after(2.0):
        await run_schedule(
            sched(Step(1.0, 100.0, FaultKind.PARTITION_MAJORITY, (), (("m1",), ("m2", "m3")))),
            ex,
            rec,
        )
    assert [c[0] for _, c in ex.calls] == ["partition", "heal"]
    (w,) = fault_windows(rec.history())
    assert w.stop is not None


class FlakyStart(FakeCluster):
    async def start(self, member: str) -> None:
        self._call("start", member)
        if member == "m1":
            raise UnavailableError("m1 will not start")


async def test_repair_tries_every_member(autojump_clock: trio.testing.MockClock) -> None:
    ex = FlakyStart()
    rec = Recorder(trio.current_time)
    five = Schedule(1, FIVE, (Step(1.0, 1.0, FaultKind.KILL, ("m1", "m2")),))
    await run_schedule(five, ex, rec)
    assert [c for _, c in ex.calls] == [("kill", "m1"), ("kill", "m2"), ("start", "m1"),
                                        ("start", "m2")]  # fmt: skip
    assert rec.history().events[-1].error == "m1 will not start"
