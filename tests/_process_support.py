"""Driving a long-running command as a user at a terminal would: start it, wait for a line
that says it is up, press Ctrl-C, and collect everything it printed until it exits."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence

import trio


async def interrupt_when(
    argv: Sequence[str], marker: bytes, *, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run ``argv`` (stdout and stderr together), send SIGINT once ``marker`` was printed,
    and return the exit code and the whole output. The caller's ``fail_after`` bounds it."""
    seen = b""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
    )
    assert process.stdout is not None
    try:
        async with process.stdout:
            while marker not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, seen.decode()
                seen += chunk
            process.send_signal(signal.SIGINT)
            while chunk := await process.stdout.receive_some():
                seen += chunk
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    return code, seen.decode()
