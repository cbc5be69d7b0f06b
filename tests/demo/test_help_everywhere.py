"""``--help`` everywhere: every command and sub-command of ``python -m microtrio`` (the
daemon, the admin commands, the demo) and of the example application's CLI answers
``--help`` with exit status 0, its own usage line and a description; plus the entry points
as real processes."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator

import pytest
from _member_support import REPO

from examples.microd.cli import build_parser as microd_parser
from microtrio._cli import build_parser as microtrio_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command path of ``parser`` (the root too), depth first."""
    yield path
    for name, sub in _subparsers(parser).items():
        yield from commands(sub, (*path, name))


def help_text(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        parser.parse_args([*path, "--help"])
    assert exited.value.code == 0, path
    return out.getvalue()


PARSERS = {"microtrio": microtrio_parser, "microd": microd_parser}


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_every_command_has_help(program: str) -> None:
    parser = PARSERS[program]()
    paths = list(commands(parser))
    must = {("daemon",), ("init",), ("tokens", "add"), ("cluster", "list"), ("sql",)}
    assert must <= set(paths), paths
    if program == "microtrio":
        assert ("demo",) in paths
    else:
        assert ("extended",) in paths
    for path in paths:
        text = help_text(parser, path)
        usage = text.splitlines()[0]
        assert usage.startswith("usage: ") and " ".join(path) in usage, (path, usage)
        body = [line for line in text.splitlines()[1:] if line.strip()]
        assert len(body) >= 2, (path, text)  # a description and options, not a bare usage
        assert "-h, --help" in text, path


def test_daemon_help_lists_log_format() -> None:
    for build in PARSERS.values():
        text = help_text(build(), ("daemon",))
        assert "--log-format {text,json}" in text
    assert "--log-format {text,json}" in help_text(microtrio_parser(), ("demo",))


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "microtrio", "--help"],
        ["-m", "microtrio", "cluster", "remove", "--help"],
        ["-m", "microtrio", "demo", "--help"],
        ["-m", "examples.microd", "extended", "--help"],
        ["-m", "microtrio._demo", "member", "--help"],
    ],
)
def test_entry_points_answer_help(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: "), done.stdout
    assert "--help" in done.stdout
