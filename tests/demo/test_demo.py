"""``python -m microtrio demo`` in a subprocess: it forms the cluster, shows a leader, makes
writes, and stops every member process and removes its state on ``--duration`` or SIGINT."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import trio
from _process_support import interrupt_when

CEILING = 120.0
SUMMARY = re.compile(r"summary: (\d+) members, leader (\S+), (\d+) writes ok, (\d+) failed")
PID = re.compile(r"(member\d+): pid (\d+)")


def demo_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "microtrio", "demo", "--no-live", "--dir", str(root), *args]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def check_stopped(output: str, root: Path) -> None:
    pids = [int(p) for _, p in PID.findall(output)]
    assert pids, output
    assert all(gone(pid) for pid in pids), output
    assert "all members stopped" in output, output
    assert not root.exists(), output


async def run_demo(root: Path, *args: str) -> tuple[int, str]:
    with trio.fail_after(CEILING):
        result = await trio.run_process(
            demo_command(root, *args), capture_stdout=True, capture_stderr=True, check=False
        )
    return result.returncode, result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize("members", [1, 3])
async def test_demo_forms_leads_writes_and_exits_0(tmp_path: Path, members: int) -> None:
    root = tmp_path / "demo"
    keep = ["--keep"] if members == 1 else []  # one run keeps its state, the other removes it
    duration = "8" if members > 1 else "4"
    code, output = await run_demo(root, "--members", str(members), "--duration", duration, *keep)
    assert code == 0, output
    summary = SUMMARY.search(output)
    assert summary is not None, output
    count, leader, ok, failed = summary.groups()
    assert int(count) == members, output
    assert re.fullmatch(r"member\d+", leader), output
    assert int(ok) >= 3, output
    assert f"formed: {members} members" in output
    assert len(PID.findall(output)) == members
    if keep:
        assert (root / "member1" / "cluster.crt").exists(), output
        assert f"state kept in {root}" in output
        root = tmp_path / "removed"  # check_stopped: the kept root is not removed
    check_stopped(output, root)


async def test_sigint_stops_every_member_and_removes_the_state(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    with trio.fail_after(CEILING):  # SIGINT once the live view is up
        code, output = await interrupt_when(demo_command(root, "--members", "1"), b"writes ok=")
    assert code == 0, output
    assert "received SIGINT" in output, output
    assert SUMMARY.search(output) is not None, output
    check_stopped(output, root)


async def test_help_and_bad_arguments() -> None:
    with trio.fail_after(CEILING):
        helped = await trio.run_process(
            [sys.executable, "-m", "microtrio", "demo", "--help"], capture_stdout=True
        )
        assert b"--duration" in helped.stdout and b"--no-live" in helped.stdout
        bad = await trio.run_process(
            [sys.executable, "-m", "microtrio", "demo", "--members", "0"],
            capture_stderr=True,
            check=False,
        )
    assert bad.returncode == 1 and b"--members must be at least 1" in bad.stderr
