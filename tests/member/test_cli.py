"""The CLI end to end in subprocesses: the one-member tutorial exactly as a user types it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from microtrio import App
from microtrio._cli import parse_duration, render

TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def microtrio(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microtrio", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = dict(os.environ)
    environ["STATE_DIR"] = str(tmp_path / "state")
    return environ


@pytest.fixture
def daemon(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "microtrio", "daemon", "--state-dir", env["STATE_DIR"]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def test_tutorial(env: dict[str, str], daemon: subprocess.Popen[str]) -> None:
    state = env["STATE_DIR"]
    ok = microtrio("waitready", "-t", "30", env=env)
    assert ok.returncode == 0, ok.stderr

    # A second daemon on the same state directory is refused with one clear line.
    second = microtrio("daemon", "--state-dir", state, env=env)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"Error: another daemon is already running on state directory {state}"
    ]

    address = f"127.0.0.1:{free_port()}"
    init = microtrio("init", "member1", address, "--bootstrap", env=env)
    assert init.returncode == 0, init.stderr

    add = microtrio("tokens", "add", "member2", env=env)
    assert add.returncode == 0, add.stderr
    token = add.stdout.strip()
    assert json.loads(base64.b64decode(token))["join_addresses"] == [address]

    listed = microtrio("tokens", "list", "-f", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["name"] == "member2" and record["tokens"] == token
    assert record["expires_at"] > "2000"  # default lifetime 3h

    sql = microtrio("sql", "select name, address, role from core_cluster_members", env=env)
    assert sql.returncode == 0, sql.stderr
    assert "member1" in sql.stdout and address in sql.stdout and "voter" in sql.stdout

    cluster = microtrio("cluster", "list", env=env)
    assert cluster.returncode == 0, cluster.stderr
    header, row = [line for line in cluster.stdout.splitlines() if line.startswith("|")]
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "NAME",
        "ADDRESS",
        "ROLE",
        "FINGERPRINT",
        "STATUS",
    ]
    assert "member1" in row and address in row and "ONLINE" in row

    curl = shutil.which("curl")
    assert curl is not None, "curl is needed by the tutorial"
    answer = subprocess.run(
        [curl, "-s", "--unix-socket", f"{state}/control.socket", "http://control.socket/core/1.0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    envelope = json.loads(answer.stdout)
    assert envelope["type"] == "sync" and envelope["status_code"] == 200
    assert envelope["metadata"]["name"] == "member1" and envelope["metadata"]["ready"] is True

    bad = microtrio("tokens", "add", "bad_name", env=env)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "Invalid member name" in bad.stderr

    down = microtrio("shutdown", env=env)
    assert down.returncode == 0, down.stderr
    assert daemon.wait(timeout=TIMEOUT) == 0
    assert not Path(state, "control.socket").exists()


def test_help_and_usage_errors(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "STATE_DIR"}
    helped = microtrio("--help", env=environ)
    assert helped.returncode == 0
    for name in ("daemon", "init", "tokens", "cluster", "sql", "waitready", "shutdown"):
        assert name in helped.stdout
    missing = microtrio("waitready", env=environ)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: no state directory: pass --state-dir or set STATE_DIR"
    nodaemon = microtrio("--state-dir", str(tmp_path / "none"), "cluster", "list", env=environ)
    assert nodaemon.returncode == 1
    assert nodaemon.stderr.startswith("Error: Cannot connect")
    assert len(nodaemon.stderr.strip().splitlines()) == 1


def test_duration_and_render() -> None:
    assert parse_duration("3h") == 3 * 3600
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("0") == 0
    with pytest.raises(ValueError):
        parse_duration("3 hours")
    rows = [["a", "1"], ["b", None]]
    assert render(["X", "Y"], rows, "csv") == "X,Y\na,1\nb,"
    assert json.loads(render(["X", "Y Z"], rows, "json")) == [
        {"x": "a", "y_z": "1"},
        {"x": "b", "y_z": ""},
    ]
    assert render(["X", "Y"], rows, "compact").splitlines()[0] == "X  Y"
    assert render(["X", "Y"], rows, "table").splitlines()[1] == "| X | Y |"


async def test_daemon_stops_on_sigterm(env: dict[str, str]) -> None:
    state = Path(env["STATE_DIR"])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-m", "microtrio", "daemon", "--state-dir", str(state)],
                    env=env,
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            await App(state).ready(timeout=TIMEOUT, poll_interval=0.1)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        assert not (state / "control.socket").exists()
