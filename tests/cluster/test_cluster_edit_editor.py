"""``cluster edit`` as an operator runs it on a terminal: the ``yes`` prompt, then the
member YAML in ``$EDITOR`` (here a small script that edits the file), through the real CLI
process with a pseudo-terminal as its stdin. Invalid YAML, invalid edits, a failing editor
and a ``no`` at the prompt are refused with a clear error and change nothing."""

from __future__ import annotations

import hashlib
import os
import pty
import sys
import tarfile
from pathlib import Path

import pytest
import trio
import yaml

from microtrio._certs import write_cert_key_pair
from microtrio._cluster._truststore import Truststore
from microtrio._state import StateDir

from .conftest import pair_for
from .test_recovery import ID
from .test_recovery import make_member as _stopped_member


def make_member(tmp_path: Path, name: str) -> tuple[StateDir, Truststore]:
    """A stopped member (``test_recovery.make_member``) with its key pairs."""
    state, truststore = _stopped_member(tmp_path, name)
    write_cert_key_pair(state.server_crt, state.server_key, pair_for(name))
    write_cert_key_pair(state.cluster_crt, state.cluster_key, pair_for("cluster"))
    return state, truststore

CEILING = 60.0

#: The editor: ``python editor.py <mode> <file>``; each mode edits the YAML its own way.
EDITOR = '''
import sys, yaml
mode, path = sys.argv[1], sys.argv[2]
text = open(path).read()
assert text.lstrip().startswith("#"), "the file starts with the explanatory comment"
members = yaml.safe_load(text)
if mode == "good":
    for m in members:
        if m["name"] == "m3":
            m["role"] = "voter"
        if m["name"] == "m2":
            m["address"] = "127.0.0.1:9102"
    text = yaml.safe_dump(members)
elif mode == "bad-yaml":
    text = "- {id: [unclosed\\n"
elif mode == "rename":
    members[0]["name"] = "intruder"
    text = yaml.safe_dump(members)
elif mode == "no-voter":
    for m in members:
        m["role"] = "spare"
    text = yaml.safe_dump(members)
elif mode == "crash":
    sys.exit(3)
open(path, "w").write(text)
'''


def _snapshot(state: StateDir) -> dict[str, str]:
    """Every file of the state directory with a hash of its contents."""
    return {
        str(p.relative_to(state.path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state.path.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


async def _edit(state: StateDir, tmp_path: Path, mode: str, answer: str) -> tuple[int, str, str]:
    """Run ``cluster edit`` with a terminal as stdin, answer the prompt, use the editor."""
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    master, slave = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())
        env = {**os.environ, "EDITOR": f"{sys.executable} {script} {mode}"}
        env.pop("VISUAL", None)
        result = await trio.run_process(
            [sys.executable, "-m", "microtrio", "--state-dir", str(state.path),
             "cluster", "edit"],
            stdin=slave, capture_stdout=True, capture_stderr=True, check=False, env=env,
        )
    finally:
        os.close(master)
        os.close(slave)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cluster_edit_in_editor(tmp_path: Path) -> None:
    state, _ = make_member(tmp_path, "m1")
    with trio.fail_after(CEILING):
        code, out, err = await _edit(state, tmp_path, "good", "yes")
    assert code == 0, err
    assert "Do you want to proceed? (yes/no)" in out
    tarball = state.path / "recovery_db.tar.gz"
    assert tarball.exists() and str(tarball) in out
    assert list(state.path.glob("db_backup.*.tar.gz"))
    patch = state.patch_global_sql.read_text()
    assert "127.0.0.1:9102" in patch and "'m2'" in patch
    # The tarball's member list is the edited one (m3 now a voter, m2 at its new address).
    with tarfile.open(tarball) as archive:
        handle = archive.extractfile("recovery.yaml")
        assert handle is not None
        listed = {m["name"]: m for m in yaml.safe_load(handle.read())}
    assert listed["m3"]["role"] == "voter" and listed["m2"]["address"] == "127.0.0.1:9102"
    assert listed["m1"]["id"] == ID["m1"]


@pytest.mark.parametrize(
    ("mode", "answer", "message"),
    [
        ("bad-yaml", "yes", "Invalid YAML"),
        ("rename", "yes", "Member ids and names must not change"),
        ("no-voter", "yes", "At least one member must be a voter"),
        ("crash", "yes", "The editor failed"),
        ("good", "no", "Recovery aborted"),
    ],
)
async def test_cluster_edit_refusals_change_nothing(
    tmp_path: Path, mode: str, answer: str, message: str
) -> None:
    state, _ = make_member(tmp_path, "m1")
    before = _snapshot(state)
    with trio.fail_after(CEILING):
        code, _, err = await _edit(state, tmp_path, mode, answer)
    assert code != 0
    assert err.startswith("Error: ") and message in err, err
    assert _snapshot(state) == before
    assert not (state.path / "recovery_db.tar.gz").exists()
