"""``examples/embed.py``: a member inside a host application's nursery."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio
from _member_support import REPO

import microtrio
from examples.embed import SCHEMA, run_host


async def test_host_nursery_cancellation_stops_the_member(tmp_path: Path) -> None:
    state_dir = tmp_path / "embedded"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: run_host(
                    str(state_dir), seconds=None, interval=0.05, task_status=task_status
                )
            )
            assert address.startswith("127.0.0.1:")
            # the host's own task writes through the member: wait until two ticks landed
            client_only = microtrio.App(state_dir)
            while True:
                rows = await client_only.sql("SELECT count(*) FROM ticks")
                assert isinstance(rows, dict)
                if rows["Results"][0]["rows"][0][0] >= 2:
                    break
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        # the member is gone: its control socket no longer answers, its lock is free,
        # and the same state directory starts again with the rows the host wrote
        app = microtrio.App(
            state_dir,
            args=microtrio.DaemonArgs(version="1.0", schema_updates=SCHEMA, drain_timeout=2.0),
        )
        async with app:
            status = await app.status()
            assert status["address"] == address and status["ready"] is True
            rows = await app.sql("SELECT count(*) FROM ticks")
            assert isinstance(rows, dict) and rows["Results"][0]["rows"][0][0] >= 2


async def test_script_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "examples" / "embed.py"), "--state-dir", str(tmp_path)]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        out = b""
        with trio.fail_after(30):
            while b"tick 1:" not in out:  # the member is up and the host task wrote once
                chunk = await process.stdout.receive_some()
                assert chunk, f"exited early: {out!r}"
                out += chunk
            assert out.startswith(b"ready 127.0.0.1:")
            process.send_signal(signal.SIGINT)
            while chunk := await process.stdout.receive_some():
                out += chunk
            err = b""
            while chunk := await process.stderr.receive_some():
                err += chunk
            assert await process.wait() == 0, err
        assert out.rstrip().endswith(b"stopped cleanly")
        assert b"Traceback" not in err
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
