"""The pieces together, in one trio run with a fake cluster: workload clients and the nemesis
record one history, the checkers judge it, the report is written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import trio
import trio.testing

from microtrio._errors import UnavailableError
from microtrio.testing._checkers import check_register, check_set
from microtrio.testing._history import CAS_MISMATCH, Recorder, fault_windows
from microtrio.testing._nemesis import FaultKind, generate_schedule, run_schedule
from microtrio.testing._report import SHADE, Chart, Validity, write_report

from .test_jepsen_report import decode_png, pixel

MEMBERS = ("m1", "m2", "m3")


class FakeCluster:
    """A linearizable register store that becomes unreliable while a fault is in force."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.values: dict[str, int] = {}
        self.items: list[int] = []
        self.faulty = False

    async def leader(self) -> str | None:
        return "m1"

    async def partition(self, blocked: frozenset[tuple[str, str]]) -> None:
        self.faulty = True

    async def heal(self) -> None:
        self.faulty = False

    async def kill(self, member: str) -> None:
        self.faulty = True

    async def start(self, member: str) -> None:
        self.faulty = False

    async def pause(self, member: str) -> None:
        raise UnavailableError("cannot pause")

    async def resume(self, member: str) -> None:
        self.faulty = False

    async def stop(self, member: str) -> None:
        self.faulty = True

    async def remove(self, member: str) -> None:
        self.faulty = True

    async def rejoin(self, member: str) -> None:
        self.faulty = False

    async def transfer_leadership(self, to: str) -> None:
        pass

    async def apply(self, f: str, key: str, value: object) -> tuple[str, object]:
        """One operation: ("ok", result) / ("fail", error) / ("info", error)."""
        await trio.sleep(self.rng.uniform(0.001, 0.01))
        if self.faulty and self.rng.random() < 0.5:
            if f != "read" and self.rng.random() < 0.5:
                self._do(f, key, value)  # it happened, but nobody heard back
            await trio.sleep(self.rng.uniform(0.1, 0.5))
            return "info", "timeout"
        result = self._do(f, key, value)
        await trio.sleep(self.rng.uniform(0.001, 0.01))
        if f == "cas" and result is False:
            return "fail", CAS_MISMATCH
        return "ok", result

    def _do(self, f: str, key: str, value: object) -> object:
        if f == "read":
            return self.values.get(key) if key != "set" else list(self.items)
        if f == "add":
            assert isinstance(value, int)
            self.items.append(value)
            return None
        if f == "write":
            assert isinstance(value, int)
            self.values[key] = value
            return None
        assert isinstance(value, list)
        if self.values.get(key) == value[0]:
            self.values[key] = value[1]
            return True
        return False


async def client(cluster: FakeCluster, rec: Recorder, first: int, stride: int, until: float,
                 rng: random.Random) -> None:  # fmt: skip
    process = first
    n = 0
    while trio.current_time() < until:
        n += 1
        f = rng.choice(["read", "write", "cas", "add"])
        key = "set" if f == "add" else rng.choice("xy")
        value: object = {"write": rng.randrange(4), "cas": [rng.randrange(4), rng.randrange(4)],
                         "add": process * 10_000 + n}.get(f)  # fmt: skip
        inv = rec.invoke(process, f, key, value)
        outcome, result = await cluster.apply(f, key, value)
        if outcome == "ok":
            rec.ok(inv, result)
        elif outcome == "fail":
            rec.fail(inv, str(result))
        else:
            rec.info(inv, str(result))
            process += stride  # a process with an unknown outcome is never reused
    inv = rec.invoke(process, "read", "set", None)  # the final read of the set
    _, items = await cluster.apply("read", "set", None)
    rec.ok(inv, items)


async def test_pipeline(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(17)
    cluster = FakeCluster(rng)
    rec = Recorder(trio.current_time)
    schedule = generate_schedule(
        MEMBERS, seed=17, duration=12, faults=[FaultKind.KILL, FaultKind.PARTITION_MAJORITY,
                                                FaultKind.PAUSE],
    )  # fmt: skip
    until = trio.current_time() + 13
    async with trio.open_nursery() as nursery:
        await nursery.start(run_schedule, schedule, cluster, rec)
        for i in range(4):
            nursery.start_soon(client, cluster, rec, i, 4, until, random.Random(i))
    history = rec.history()
    ops = history.operations()
    assert any(o.unknown for o in ops) and sum(o.ok for o in ops) > 500
    # Two workloads share this history: each checker gets its own operations.
    results = [
        check_register(o for o in ops if o.key in ("x", "y")),
        check_set(o for o in ops if o.key == "set"),
    ]
    assert all(r.validity is Validity.VALID for r in results), [r.anomalies for r in results]
    paths = write_report(tmp_path, history, results)
    verdict = json.loads(paths.verdict.read_text())
    assert verdict["validity"] == "valid" and verdict["meta"]["nemesis"]["seed"] == 17
    windows = [w for w in fault_windows(history) if w.fault != "pause"]
    assert windows and len(verdict["faults"]) == len(schedule.steps)
    assert paths.png is not None
    _, _, rows = decode_png(paths.png.read_bytes())
    chart = Chart(history)
    w = windows[0]
    assert w.stop is not None
    assert pixel(rows, chart.x_of((w.start + w.stop) / 2), chart.throughput.top + 3) == SHADE
