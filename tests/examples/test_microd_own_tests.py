"""The example application passes its own tests, built on ``microtrio.testing``
(``examples/microd/tests``: three members of the application per test), run as its
developer would: ``python -m pytest examples/microd/tests`` from the repository root."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
CEILING = 400.0


async def test_the_example_application_passes_its_own_tests() -> None:
    with trio.fail_after(CEILING):
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "pytest",
                "-v",
                "-p",
                "no:cacheprovider",
                "examples/microd/tests",
            ],
            cwd=REPO,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        )
    output = done.stdout.decode() + done.stderr.decode()
    outcomes = dict(re.findall(r"::(\w+) (PASSED|FAILED|ERROR|SKIPPED)", output))
    assert outcomes == {
        "test_schema_extensions_and_replication": "PASSED",
        "test_extended_fans_out_to_every_other_member": "PASSED",
        "test_hooks_run_on_their_members": "PASSED",
    }, output
    assert done.returncode == 0, output
