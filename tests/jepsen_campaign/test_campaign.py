"""The bounded fault-injection campaign: real member processes, every workload, every
nemesis, checked; and deliberately broken members that the checkers must catch.

The seeds are fixed so that CI runs the same schedules (``MICROTRIO_CAMPAIGN_SEED`` picks
another); each run's report (history, verdict, picture, member logs) is under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import trio

from microtrio.testing._campaign import CampaignConfig, RunResult, run_campaign
from microtrio.testing._history import NEMESIS, Outcome
from microtrio.testing._nemesis import ALL_FAULTS, FaultKind
from microtrio.testing._processes import CampaignPki, ProcessCluster
from microtrio.testing._report import Validity
from microtrio.testing._workloads import WORKLOADS

HERE = Path(__file__).resolve().parent
SEED = int(os.environ.get("MICROTRIO_CAMPAIGN_SEED", "20261127"))


def explain(result: RunResult) -> str:
    verdict = json.loads((result.folder / "verdict.json").read_text())
    bad = [r for r in verdict["results"] if r["validity"] != "valid"]
    return f"seed {result.seed}, report in {result.folder}: {json.dumps(bad)[:3000]}"


def assert_complete_report(result: RunResult) -> None:
    for name in ("history.jsonl", "verdict.json", "latency.png", "schedule.txt"):
        assert (result.folder / name).stat().st_size > 0, name
    assert (result.folder / "latency.png").read_bytes().startswith(b"\x89PNG")


def assert_every_workload_progressed(result: RunResult, minimum: int) -> None:
    ops = result.history.operations()
    for name in WORKLOADS:
        done = [o for o in ops if str(o.key).startswith(f"{name}:") and o.outcome is Outcome.OK]
        assert len(done) >= minimum, f"{name}: only {len(done)} ok operations"


def faults_inflicted(result: RunResult) -> list[str]:
    return [
        str(e.value["fault"])
        for e in result.history
        if e.process == NEMESIS and e.f == "start" and e.type.value == "ok"
    ]


@pytest.mark.timeout(240)
async def test_three_members_every_workload_under_every_nemesis(tmp_path: Path) -> None:
    config = CampaignConfig(
        results=tmp_path, members=3, duration=40.0, seed=SEED,
        fault_time=(1.5, 3.5), quiet_time=(1.0, 2.0),
    )  # fmt: skip
    with trio.fail_after(200):
        result = await run_campaign(config)
    assert result.validity is Validity.VALID, explain(result)
    assert result.crashes == [], f"members exited by themselves, see {result.folder}"
    assert_complete_report(result)
    assert_every_workload_progressed(result, 20)
    inflicted = faults_inflicted(result)
    assert len(inflicted) >= 5, inflicted
    assert len(set(inflicted)) >= 3, inflicted


@pytest.mark.timeout(240)
async def test_five_members(tmp_path: Path) -> None:
    config = CampaignConfig(
        results=tmp_path, members=5, duration=25.0, seed=SEED + 1,
        faults=(FaultKind.PARTITION_MAJORITY, FaultKind.PARTITION_BRIDGE, FaultKind.KILL,
                FaultKind.PAUSE, FaultKind.KILL_LEADER, FaultKind.MEMBERSHIP),
        fault_time=(1.5, 3.0), quiet_time=(1.0, 2.0),
    )  # fmt: skip
    with trio.fail_after(200):
        result = await run_campaign(config)
    assert result.validity is Validity.VALID, explain(result)
    assert result.crashes == [], f"members exited by themselves, see {result.folder}"
    assert_every_workload_progressed(result, 10)
    assert len(faults_inflicted(result)) >= 3


@pytest.mark.timeout(120)
async def test_writes_acknowledged_before_commit_are_caught(tmp_path: Path) -> None:
    config = CampaignConfig(
        results=tmp_path, members=3, duration=8.0, seed=SEED, faults=(),
        workloads=("register",), plugin=HERE / "_early_ack.py",
    )  # fmt: skip
    with trio.fail_after(100):
        result = await run_campaign(config)
    assert result.validity is Validity.INVALID
    (register,) = result.results
    assert register.kinds() == {"nonlinearizable"}


@pytest.mark.timeout(120)
async def test_stale_reads_are_caught(tmp_path: Path) -> None:
    config = CampaignConfig(
        results=tmp_path, members=3, duration=15.0, seed=SEED,
        faults=(FaultKind.PARTITION_MAJORITY, FaultKind.PARTITION_LEADER),
        workloads=("register",), plugin=HERE / "_stale_reads.py",
        fault_time=(3.0, 4.0), quiet_time=(0.5, 1.0),
        request_timeout=1.0,  # clients of a cut-off member keep reading instead of waiting
    )  # fmt: skip
    with trio.fail_after(100):
        result = await run_campaign(config)
    assert result.validity is Validity.INVALID
    assert "nonlinearizable" in result.results[0].kinds()


def test_all_fault_kinds_are_in_the_default_campaign() -> None:
    assert CampaignConfig(results=Path("unused")).faults == ALL_FAULTS


def process_state(pid: int) -> str:
    """The one-letter state in /proc (T: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.timeout(120)
async def test_process_manager_signals_and_notices_crashes(tmp_path: Path) -> None:
    pki = await trio.to_thread.run_sync(CampaignPki.create, tmp_path / "pki", ["member1"])
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            cluster = ProcessCluster(
                tmp_path, ["member1"], pki, nursery=nursery, peer_address=lambda s, d: ""
            )
            try:
                await cluster.start("member1")
                m = cluster["member1"]
                pid = m.pid
                assert pid is not None and m.running
                assert m.address.startswith("127.0.0.1:") and not m.address.endswith(":0")
                await cluster.pause("member1")
                assert process_state(pid) == "T"
                await cluster.resume("member1")
                assert process_state(pid) != "T"
                await cluster.kill("member1")  # the runner's own kill is no crash
                assert not m.running and cluster.check_crashes() == []
                address = m.address
                await cluster.start("member1")
                assert m.address == address  # restarted where its peers expect it
                assert m.pid is not None and m.pid != pid
                os.kill(m.pid, signal.SIGKILL)  # from outside: a crash
                assert m.process is not None
                await m.process.wait()
                assert [c["member"] for c in cluster.check_crashes()] == ["member1"]
            finally:
                await cluster.aclose()
