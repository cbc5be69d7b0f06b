"""Issue 8 at the daemon level: file modes, secrets in logs, corrupted state files.

One member is bootstrapped once per module (in its own ``trio.run``, with every
``microtrio`` log record captured at DEBUG), issues a join token, lists it and is shut
down; its state directory is the template the tests inspect or copy and damage.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import microtrio
from microtrio import StateError

CEILING = 60.0


@dataclass
class Template:
    state_dir: Path
    token: str
    modes_while_running: dict[str, int]
    logs: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.sink.append(text)


def args() -> microtrio.DaemonArgs:
    return microtrio.DaemonArgs(version="1.0", drain_timeout=2.0, hook_timeout=5.0)


def modes(root: Path) -> dict[str, int]:
    """``{relative path: st_mode}`` of everything under ``root`` (root itself is ``.``)."""
    found = {".": root.lstat().st_mode}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = path.lstat().st_mode
    return found


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    state_dir = tmp_path_factory.mktemp("template") / "state"
    logs: list[str] = []
    handler = _Collect(logs)
    logger = logging.getLogger("microtrio")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    box: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(CEILING):
            async with trio.open_nursery() as nursery:
                app = microtrio.App(state_dir, args=args())
                await nursery.start(app.run)
                await app.new_cluster("member1", "127.0.0.1:0")
                box["token"] = await app.new_join_token("member2")
                await app.list_join_tokens()
                box["modes"] = modes(state_dir)
                await app.shutdown()

    try:
        trio.run(main)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    yield Template(state_dir, box["token"], box["modes"], logs)


# -- file modes ---------------------------------------------------------------------------

EXPECTED_DIRS = {".": 0o711, "truststore": 0o700, "database": 0o700, "certificates": 0o700}


def audit(found: dict[str, int], *, running: bool) -> list[str]:
    """Every deviation from the state directory's mode policy, as readable strings."""
    problems: list[str] = []
    for rel, mode in sorted(found.items()):
        perms = stat.S_IMODE(mode)
        top = rel.split(os.sep)[0]
        if stat.S_ISLNK(mode):
            problems.append(f"{rel}: symbolic link in the state directory")
        elif rel in EXPECTED_DIRS:
            if not stat.S_ISDIR(mode) or perms != EXPECTED_DIRS[rel]:
                problems.append(f"{rel}: mode {perms:o}, expected directory {EXPECTED_DIRS[rel]:o}")
        elif rel == "control.socket":
            if not running or not stat.S_ISSOCK(mode) or perms != 0o660:
                problems.append(f"{rel}: mode {perms:o} (running={running}), expected socket 660")
        elif rel.endswith(".key") or rel == ".lock":
            if perms != 0o600:
                problems.append(f"{rel}: private file with mode {perms:o}, expected 600")
        elif perms & 0o022:
            problems.append(f"{rel}: writable by group or others (mode {perms:o})")
        if top not in EXPECTED_DIRS and "/" not in rel and stat.S_ISDIR(mode) and rel != ".":
            problems.append(f"{rel}: unexpected directory at the top level")
        if rel.endswith(".tmp") and not running:
            problems.append(f"{rel}: leftover temporary file")
    for rel in ("server.key", "cluster.key", "server.crt", "cluster.crt", "daemon.yaml"):
        if rel not in found:
            problems.append(f"{rel}: missing")
    return problems


def test_state_dir_modes_while_running(template: Template) -> None:
    assert audit(template.modes_while_running, running=True) == []


def test_state_dir_modes_after_shutdown(template: Template) -> None:
    found = modes(template.state_dir)
    assert "control.socket" not in found
    assert audit(found, running=False) == []
    owner = os.getuid()
    for rel in found:
        assert (template.state_dir / rel).lstat().st_uid == owner, rel


def test_audit_catches_bad_modes(template: Template, tmp_path: Path) -> None:
    """The audit itself can fail: loosen a key, a private directory and a plain file."""
    copy = tmp_path / "state"
    shutil.copytree(template.state_dir, copy, symlinks=True)
    os.chmod(copy / "cluster.key", 0o644)
    os.chmod(copy / "truststore", 0o755)
    os.chmod(copy / "daemon.yaml", 0o666)
    problems = audit(modes(copy), running=False)
    assert len(problems) == 3, problems


# -- secrets in logs ----------------------------------------------------------------------


def secrets_of(template: Template) -> dict[str, str]:
    secret = json.loads(base64.b64decode(template.token))["secret"]
    found = {"token secret": secret, "token": template.token}
    for key in ("server.key", "cluster.key"):
        pem = (template.state_dir / key).read_text()
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        assert body, key
        for number, line in enumerate(body):
            found[f"{key} line {number}"] = line
    return found


def test_no_secret_in_logs(template: Template) -> None:
    assert template.logs, "the capture saw no log records: the test would prove nothing"
    text = "\n".join(template.logs)
    assert "PRIVATE KEY" not in text
    leaked = [what for what, value in secrets_of(template).items() if value in text]
    assert leaked == []


# -- corrupted state files at daemon start ------------------------------------------------


def state_errors(exc: BaseException) -> list[StateError]:
    if isinstance(exc, StateError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [found for inner in exc.exceptions for found in state_errors(inner)]
    return []


def corrupt_truststore(state: Path) -> Path:
    path = state / "truststore" / "member1.yaml"
    path.write_bytes(path.read_bytes()[:40] + b"\xff\x00garbage: [")
    return path


def truststore_bad_certificate(state: Path) -> Path:
    path = state / "truststore" / "member1.yaml"
    text = path.read_text()
    start = text.index("MII")
    path.write_text(text[:start] + "AAAA" + text[start + 4 :])
    return path


def truststore_bad_name(state: Path) -> Path:
    path = state / "truststore" / "member1.yaml"
    path.write_text(path.read_text().replace("name: member1", "name: ../../etc/x"))
    return path


def corrupt_daemon_yaml(state: Path) -> Path:
    path = state / "daemon.yaml"
    path.write_bytes(b"name: member1\naddress: [unclosed\n\xff")
    return path


def daemon_yaml_wrong_shape(state: Path) -> Path:
    path = state / "daemon.yaml"
    path.write_text("- member1\n- 127.0.0.1:1\n")
    return path


@pytest.mark.parametrize(
    "damage",
    [
        corrupt_truststore,
        truststore_bad_certificate,
        truststore_bad_name,
        corrupt_daemon_yaml,
        daemon_yaml_wrong_shape,
    ],
)
async def test_member_refuses_a_corrupted_state_dir(
    template: Template, tmp_path: Path, damage: Any
) -> None:
    state = tmp_path / "state"
    shutil.copytree(template.state_dir, state, symlinks=True)
    path = damage(state)
    app = microtrio.App(state, args=args())
    with trio.fail_after(CEILING):
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                nursery.cancel_scope.cancel()
        except BaseException as exc:  # noqa: BLE001 - inspected below
            found = state_errors(exc)
            if not found:
                raise
        else:
            raise AssertionError(f"a member started on a state directory with a damaged {path}")
    assert any(str(path) in str(err) for err in found), [str(e) for e in found]
    # Nothing was "repaired" behind the operator's back.
    assert path.exists()


def daemon_yaml_bad_name(state: Path) -> Path:
    path = state / "daemon.yaml"
    path.write_text(path.read_text().replace("name: member1", "name: ../evil"))
    return path


def daemon_yaml_bad_address(state: Path) -> Path:
    path = state / "daemon.yaml"
    text = path.read_text()
    start = text.index("address: ") + len("address: ")
    end = text.index("\n", start)
    path.write_text(text[:start] + "'localhost:x'" + text[end:])
    return path


@pytest.mark.parametrize("damage", [daemon_yaml_bad_name, daemon_yaml_bad_address])
async def test_member_refuses_invalid_values_in_daemon_yaml(
    template: Template, tmp_path: Path, damage: Any
) -> None:
    await test_member_refuses_a_corrupted_state_dir(template, tmp_path, damage)
