from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from microtrio import StateError
from microtrio._state import DaemonConfig, ServerConfig, StateDir, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_paths_are_absolute_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = StateDir("rel")
    assert state.path == tmp_path / "rel"
    assert state.control_socket == tmp_path / "rel" / "control.socket"
    assert state.daemon_yaml.name == "daemon.yaml"
    assert (state.server_crt.name, state.server_key.name) == ("server.crt", "server.key")
    assert (state.cluster_crt.name, state.cluster_key.name) == ("cluster.crt", "cluster.key")
    assert state.truststore_file("m1") == tmp_path / "rel" / "truststore" / "m1.yaml"
    assert state.database_info == tmp_path / "rel" / "database" / "info.yaml"
    assert state.certificate_files("web")[0] == tmp_path / "rel" / "certificates" / "web.crt"
    assert state.patch_global_sql.name == "patch.global.sql"
    assert state.recovery_tarball.name == "recovery_db.tar.gz"
    assert not (tmp_path / "rel").exists()  # constructor does no I/O


def test_create_sets_modes(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    old = os.umask(0o077)
    try:
        state.create()
    finally:
        os.umask(old)
    assert _mode(state.path) == 0o711
    for sub in (state.truststore_dir, state.database_dir, state.certificates_dir):
        assert _mode(sub) == 0o700
    os.chmod(state.truststore_dir, 0o755)
    state.create()  # idempotent, and repairs modes
    assert _mode(state.truststore_dir) == 0o700


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.key"
    atomic_write(target, b"one", 0o600)
    assert target.read_bytes() == b"one" and _mode(target) == 0o600
    atomic_write(target, "two", 0o644)
    assert target.read_text() == "two" and _mode(target) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.key"]  # no temp files left


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, 12345, 0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_daemon_config_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    assert state.load_daemon_config() is None
    config = DaemonConfig("m1", "127.0.0.1:8443", {"web": ServerConfig("127.0.0.1:9000")})
    state.save_daemon_config(config)
    assert state.load_daemon_config() == config
    assert _mode(state.daemon_yaml) == 0o644
    text = state.daemon_yaml.read_text()
    assert "name: m1" in text and "servers:" in text and "address: 127.0.0.1:9000" in text
    with pytest.raises(TypeError):
        config.servers["x"] = ServerConfig("")  # type: ignore[index]


@pytest.mark.parametrize(
    "text", ["name: [unclosed", "- a list", "name: 3\naddress: x", "name: a\nservers: 5"]
)
def test_malformed_daemon_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    state = StateDir(tmp_path)
    state.create()
    state.daemon_yaml.write_text(text)
    with pytest.raises(StateError, match="daemon.yaml"):
        state.load_daemon_config()


def test_is_initialised(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    assert not state.is_initialised()
    state.save_daemon_config(DaemonConfig("m1", "127.0.0.1:8443"))
    assert not state.is_initialised()
    state.database_info.write_text("ID: 1\n")
    assert state.is_initialised()


def test_lock_refuses_second_daemon_in_process(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with state.acquire_lock() as lock:
        assert lock.held
        with pytest.raises(StateError, match="another daemon is already running on state"):
            StateDir(tmp_path / "s").acquire_lock()
    assert not lock.held
    StateDir(tmp_path / "s").acquire_lock().release()  # free again


def test_lock_refuses_second_daemon_across_processes(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with state.acquire_lock():
        code = (
            "import sys\nfrom microtrio._state import StateDir\nfrom microtrio import StateError\n"
            "try:\n    StateDir(sys.argv[1]).acquire_lock()\nexcept StateError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(state.path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert "another daemon is already running" in result.stdout


def test_lock_refuses_when_control_socket_answers(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(state.control_socket))
        live.listen(1)
        with pytest.raises(StateError, match="another daemon"):
            state.acquire_lock()
    finally:
        live.close()
    # Now the file is stale (nobody listens): it is removed and the lock is granted.
    assert state.control_socket.exists()
    with state.acquire_lock():
        assert not state.control_socket.exists()


def test_reset_wipes_contents(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with state.acquire_lock():
        state.save_daemon_config(DaemonConfig("m1", "127.0.0.1:8443"))
        state.database_info.write_text("x")
        state.truststore_file("m1").write_text("x")
        state.server_key.write_text("k")
        (state.database_dir / "nested").mkdir()
        state.reset()
        assert not state.is_initialised()
        assert not state.server_key.exists()
        assert list(state.truststore_dir.iterdir()) == []
        assert list(state.database_dir.iterdir()) == []
        assert _mode(state.path) == 0o711
        # the lock survives the reset
        with pytest.raises(StateError):
            StateDir(state.path).acquire_lock()
