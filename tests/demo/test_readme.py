"""The README's commands as a new user runs them: the quick start's demo (exactly as written,
after the install step) forms a 3-member cluster, shows a leader and writes, and stops every
member and removes its temporary state on Ctrl-C; the README's test command is what CI runs
(``.ci/run``), so the docs build (``tests/docs``, ``mkdocs build --strict``) and every test
named in docs/tutorial.md run there."""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import trio
from _process_support import interrupt_when

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SH = re.compile(r"```sh\n(.*?)\n```", re.S)
CEILING = 150.0


def readme_commands() -> list[str]:
    """Every shell command of the README, ``&&`` chains split."""
    commands: list[str] = []
    for block in SH.findall(README.read_text()):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def test_the_readme_commands_are_install_demo_and_ci() -> None:
    commands = readme_commands()
    assert commands == [
        "pip install -e .",
        "python -m microtrio demo",
        "pip install -e '.[test]'",
        "python -m pytest",
    ], commands
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]' && python -m pytest" in ci
    extras = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"mkdocs>=', extras), "the [test] extra must install mkdocs for CI"


async def test_the_quick_start_demo_as_written() -> None:
    """``python -m microtrio demo`` (the README's second command), stopped with SIGINT once
    its view shows writes, as a user presses Ctrl-C. Its temporary folder goes into a short
    ``TMPDIR`` of the test's (pytest's own is too long for the members' unix sockets)."""
    with tempfile.TemporaryDirectory(prefix="mt-readme-") as tmp:
        await _run_demo(Path(tmp))


async def _run_demo(tmp_path: Path) -> None:
    (demo,) = [c for c in readme_commands() if "demo" in c]
    argv = shlex.split(demo)
    assert argv[:3] == ["python", "-m", "microtrio"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    with trio.fail_after(CEILING):
        # the cluster formed and takes writes
        code, output = await interrupt_when([sys.executable, *argv[1:]], b"writes ok=", env=env)
    assert code == 0, output
    assert "formed: 3 members" in output, output
    assert re.search(r"leader member\d", output), output
    assert "all members stopped" in output, output
    left = await trio.to_thread.run_sync(lambda: list(tmp_path.iterdir()))
    assert left == [], output  # its temporary state is gone
