"""The bounded fault-injection campaign: real kv daemons, every workload, every nemesis,
checked; and deliberately broken daemons that the checkers must catch.

The three-member run uses network namespaces when it can (root: CI), the five-member run
the transport's fault layer, so both ways of partitioning are exercised. The seeds are fixed
so that CI runs the same schedules (``MICROTRIO_CAMPAIGN_SEED`` picks another; the checks
that name a fault kind then only apply to the default seeds); each run's report (history,
verdict, picture, member logs) is under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from microtrio.testing._campaign import CampaignConfig, RunResult, run_campaign
from microtrio.testing._history import NEMESIS, Outcome
from microtrio.testing._nemesis import ALL_FAULTS, FaultKind
from microtrio.testing._netns import netns_unavailable_reason
from microtrio.testing._report import Validity
from microtrio.testing._workloads import WORKLOADS

HERE = Path(__file__).resolve().parent
SEED = int(os.environ.get("MICROTRIO_CAMPAIGN_SEED", "20261127"))
DEFAULT_SEED = SEED == 20261127


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
    if DEFAULT_SEED:
        assert {"loss", "membership", "kill", "restart"} <= set(inflicted), inflicted
    netns = await trio.to_thread.run_sync(netns_unavailable_reason) is None
    assert result.network == ("netns" if netns else "faults")
    members = json.loads((result.folder / "members.json").read_text())
    if netns:  # the daemons' own addresses are their namespace addresses
        assert all(a.startswith("192.0.2.") for a in members.values()), members


@pytest.mark.timeout(240)
async def test_five_members(tmp_path: Path) -> None:
    config = CampaignConfig(
        results=tmp_path, members=5, duration=25.0, seed=SEED + 1,
        faults=(FaultKind.PARTITION_MAJORITY, FaultKind.PARTITION_BRIDGE, FaultKind.KILL,
                FaultKind.PAUSE, FaultKind.KILL_LEADER, FaultKind.MEMBERSHIP, FaultKind.DELAY,
                FaultKind.LOSS, FaultKind.TRANSFER),
        fault_time=(1.5, 3.0), quiet_time=(1.0, 2.0), network="faults",
    )  # fmt: skip
    with trio.fail_after(200):
        result = await run_campaign(config)
    assert result.validity is Validity.VALID, explain(result)
    assert result.crashes == [], f"members exited by themselves, see {result.folder}"
    assert_every_workload_progressed(result, 10)
    inflicted = faults_inflicted(result)
    assert len(inflicted) >= 3, inflicted
    if DEFAULT_SEED:
        assert {"partition-bridge", "membership", "delay"} <= set(inflicted), inflicted
    assert result.network == "faults"


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
