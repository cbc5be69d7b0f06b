"""Developer sessions: tests, lint, typing, and the long fault campaign."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "microtrio", "tests", "bench", "examples")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".", "mypy", "types-PyYAML")
    session.run("mypy", "--strict", "microtrio")


@nox.session
def raft_campaign(session: nox.Session) -> None:
    """A long seeded Raft simulation campaign: nox -s raft_campaign -- --raft-seeds 100000."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "tests/raft", "-q", *session.posargs)


@nox.session
def jepsen(session: nox.Session) -> None:
    """A long fault-injection campaign of real kv daemons (docs/testing.md):
    nox -s jepsen -- --minutes 30 --members 3,5 --run-duration 60 --seed 1 --results DIR
    (every option: python bench/jepsen.py --help)."""
    session.install("-e", ".[test]")
    session.run("python", "bench/jepsen.py", *session.posargs)
