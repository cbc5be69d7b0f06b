"""The three-member part of docs/tutorial.md, run as written: the shell blocks after the
``<!-- test: tutorial-three-members -->`` markers, in order, with the test's own state
directories and free ports in place of ``/tmp/mN`` and ``127.0.0.1:900N``, in a folder that
holds the tutorial's ``myapp.py`` (the ``<!-- test: tutorial-file myapp.py -->`` block) as a
reader would save it. So a reader gets a 3-member cluster of the example application, adds an
endpoint and a schema update, restarts the members on them, and sees both replicated. Skips,
saying why, while the CLI has no ``cluster remove``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "docs" / "tutorial.md"
BLOCK = re.compile(r"<!-- test: tutorial-three-members -->\n```sh\n(.*?)\n```", re.S)
FILE = re.compile(r"<!-- test: tutorial-file (\S+) -->\n```python\n(.*?)\n```", re.S)
CEILING = 180.0

# On any exit, stop the daemons the block started in the background.
PRELUDE = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tutorial_script(root: Path) -> str:
    """The marked shell blocks as one script; the marked files written into ``root``."""
    text = TUTORIAL.read_text()
    files = dict(FILE.findall(text))
    assert set(files) == {"myapp.py"}, sorted(files)
    for name, content in files.items():
        (root / name).write_text(content + "\n")
    blocks = BLOCK.findall(text)
    assert len(blocks) == 3, len(blocks)
    block = "\n".join(blocks).replace("/tmp/m", f"{root}/m")
    for n in (1, 2, 3):
        block = block.replace(f"127.0.0.1:900{n}", f"127.0.0.1:{free_port()}")
    assert "/tmp/m" not in block.replace(f"{root}/m", "") and ":900" not in block
    return PRELUDE + block + "\n"


@pytest.mark.slow
async def test_the_three_member_tutorial_runs_as_written(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        remove = await trio.run_process(
            [sys.executable, "-m", "examples.microd", "cluster", "remove", "--help"],
            cwd=REPO,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if remove.returncode != 0:
            pytest.skip(reason="the CLI has no `cluster remove` yet")
        result = await trio.run_process(
            ["bash", "-c", tutorial_script(tmp_path)],
            cwd=tmp_path,  # where the reader saved myapp.py; `examples` from the checkout
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    tables = [line for line in result.stdout.decode().splitlines() if line.startswith("|")]
    first_list = [line for line in tables if "voter" in line]
    for name in ("member1", "member2", "member3"):
        assert any(name in line for line in first_list), output
    # the row written through member3, read on member1 and member2
    assert sum(1 for line in tables if "hello" in line and "world" in line) == 2, output
    assert "member1" in output and "says" in output, output
    # the new endpoint: the note added through member3 is listed by member1 (the envelope's
    # metadata) and is in member2's new table (a table row of `sql`)
    listed = [json.loads(line) for line in result.stdout.decode().splitlines() if '"sync"' in line]
    assert {"type": "sync", "status": "Success"}.items() <= listed[0].items(), listed
    assert listed[0]["metadata"] == {}, listed  # the POST
    assert listed[1]["metadata"] == ["replicated"], listed  # the GET on member1
    assert any("replicated" in line and line.startswith("| 1 ") for line in tables), output
    assert not (tmp_path / "m2" / "cluster.crt").exists(), output  # removed: wiped
