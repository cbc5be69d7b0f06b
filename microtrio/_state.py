"""The state directory of one member, its daemon config and the single-daemon lock.

Layout and modes follow reference section 4::

    <state>/                0711
        .lock               fcntl (flock) lock held by the running daemon
        control.socket      0660 unix socket (created by the listener)
        daemon.yaml         0644 DaemonConfig
        server.crt/.key     this member's identity (key 0600)
        cluster.crt/.key    the shared cluster keypair (key 0600)
        truststore/         0700 one <name>.yaml per member
        database/           0700 replicated database; info.yaml marks "initialised"
        certificates/       0700 <server>.crt/.key/.ca for additional listeners
        patch.global.sql    transient
        recovery_db.tar.gz  transient

Every method here does blocking file I/O (small, local files). Daemon code calls them
through ``trio.to_thread.run_sync``. All writes of files that must survive a crash go
through :func:`atomic_write` (write a temporary file, fsync, rename, fsync the directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, final

import yaml

from ._cluster._names import DEFAULT_PORT, parse_address, validate_name
from ._errors import StateError, ValidationError

__all__ = [
    "DaemonConfig",
    "ServerConfig",
    "StateDir",
    "StateLock",
    "atomic_write",
]

logger = logging.getLogger("microtrio.state")

DIR_MODE = 0o711
PRIVATE_DIR_MODE = 0o700


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (blocking).

    Writes a temporary file in the same directory with ``mode``, fsyncs it, renames it over
    ``path`` and fsyncs the directory. Readers see either the old or the new content.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@final
@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One additional listener in ``daemon.yaml``: its ``address`` (``ip:port``, may be empty)."""

    address: str = ""


@final
@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The contents of ``daemon.yaml``: ``name``, ``address`` and ``servers``."""

    name: str
    address: str
    servers: Mapping[str, ServerConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", MappingProxyType(dict(self.servers)))

    def to_dict(self) -> dict[str, Any]:
        """The wire/YAML shape: ``{name, address, servers: {name: {address}}}``."""
        return {
            "name": self.name,
            "address": self.address,
            "servers": {k: {"address": v.address} for k, v in sorted(self.servers.items())},
        }

    @classmethod
    def from_dict(cls, data: object) -> DaemonConfig:
        """Build from the YAML/JSON shape; raises ValueError on a wrong shape."""
        if not isinstance(data, dict):
            raise ValueError("expected a mapping")
        name = data.get("name")
        address = data.get("address", "")
        if not isinstance(name, str) or not isinstance(address, str):
            raise ValueError("'name' and 'address' must be strings")
        raw_servers = data.get("servers") or {}
        if not isinstance(raw_servers, dict):
            raise ValueError("'servers' must be a mapping")
        servers: dict[str, ServerConfig] = {}
        for key, value in raw_servers.items():
            if not isinstance(key, str):
                raise ValueError("server names must be strings")
            entry = {} if value is None else value
            server_address = entry.get("address", "") if isinstance(entry, dict) else None
            if not isinstance(server_address, str):
                raise ValueError(f"server {key!r}: 'address' must be a string")
            servers[key] = ServerConfig(server_address)
        return cls(name=name, address=address, servers=servers)


def _checked(config: DaemonConfig) -> DaemonConfig:
    """``config`` if its names and addresses are valid (a name becomes file names and
    certificate SANs), else ValidationError."""
    validate_name(config.name)
    parse_address(config.address, default_port=DEFAULT_PORT, allow_port_zero=True)
    for server, entry in config.servers.items():
        validate_name(server)
        if entry.address:
            parse_address(entry.address, default_port=DEFAULT_PORT, allow_port_zero=True)
    return config


@final
class StateLock:
    """The held single-daemon lock; release with :meth:`release` or use as a context manager."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@final
class StateDir:
    """Paths and operations of one member's state directory (``path`` is made absolute).

    The constructor does no I/O; call :meth:`create` to make the tree with its modes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def control_socket(self) -> Path:
        return self.path / "control.socket"

    @property
    def daemon_yaml(self) -> Path:
        return self.path / "daemon.yaml"

    @property
    def server_crt(self) -> Path:
        return self.path / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.path / "server.key"

    @property
    def cluster_crt(self) -> Path:
        return self.path / "cluster.crt"

    @property
    def cluster_key(self) -> Path:
        return self.path / "cluster.key"

    @property
    def truststore_dir(self) -> Path:
        return self.path / "truststore"

    @property
    def database_dir(self) -> Path:
        return self.path / "database"

    @property
    def database_info(self) -> Path:
        return self.database_dir / "info.yaml"

    @property
    def certificates_dir(self) -> Path:
        return self.path / "certificates"

    @property
    def patch_global_sql(self) -> Path:
        return self.path / "patch.global.sql"

    @property
    def recovery_tarball(self) -> Path:
        return self.path / "recovery_db.tar.gz"

    def truststore_file(self, name: str) -> Path:
        """``truststore/<name>.yaml`` (``name`` must already be validated)."""
        return self.truststore_dir / f"{name}.yaml"

    def certificate_files(self, server: str) -> tuple[Path, Path, Path]:
        """``certificates/<server>.crt``, ``.key`` and ``.ca`` of an additional listener."""
        base = self.certificates_dir
        return base / f"{server}.crt", base / f"{server}.key", base / f"{server}.ca"

    # -- tree ----------------------------------------------------------------------------

    def create(self) -> None:
        """Create the tree (idempotent) and enforce the modes of reference section 4."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, DIR_MODE)
            for sub in (self.truststore_dir, self.database_dir, self.certificates_dir):
                sub.mkdir(exist_ok=True)
                os.chmod(sub, PRIVATE_DIR_MODE)
        except OSError as exc:
            raise StateError(f"Cannot create state directory {self.path}: {exc}") from exc

    def is_initialised(self) -> bool:
        """True when both ``daemon.yaml`` and ``database/info.yaml`` exist."""
        return self.daemon_yaml.is_file() and self.database_info.is_file()

    def reset(self) -> None:
        """Wipe the whole contents of the state directory and recreate the empty tree.

        The lock file is kept (its lock is held by the running daemon) and so is a live
        ``control.socket`` if the daemon keeps serving while uninitialised.
        """
        keep = {self.lock_file.name, self.control_socket.name}
        try:
            for entry in self.path.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"Cannot reset state directory {self.path}: {exc}") from exc
        logger.info("state directory %s wiped", self.path)
        self.create()

    # -- daemon.yaml ---------------------------------------------------------------------

    def load_daemon_config(self) -> DaemonConfig | None:
        """Read ``daemon.yaml``; None if absent; StateError naming the file if malformed."""
        try:
            text = self.daemon_yaml.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"Cannot read {self.daemon_yaml}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise StateError(f"Malformed daemon config {self.daemon_yaml}: {exc}") from exc
        try:
            return _checked(DaemonConfig.from_dict(yaml.safe_load(text)))
        except (yaml.YAMLError, ValueError, RecursionError, ValidationError) as exc:
            raise StateError(f"Malformed daemon config {self.daemon_yaml}: {exc}") from exc

    def save_daemon_config(self, config: DaemonConfig) -> None:
        """Write ``daemon.yaml`` atomically (mode 0644)."""
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        try:
            atomic_write(self.daemon_yaml, text, 0o644)
        except OSError as exc:
            raise StateError(f"Cannot write {self.daemon_yaml}: {exc}") from exc

    # -- the single-daemon lock ----------------------------------------------------------

    def acquire_lock(self) -> StateLock:
        """Take the exclusive daemon lock or raise StateError.

        Uses ``flock`` on ``.lock`` (so two locks conflict even inside one process).
        Also refuses when something answers on ``control.socket``; a stale socket file
        (nothing listening) is removed. Creates the tree first.
        """
        self.create()
        busy = StateError(f"another daemon is already running on state directory {self.path}")
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"Cannot open lock file {self.lock_file}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise busy from exc
            raise StateError(f"Cannot lock {self.lock_file}: {exc}") from exc
        lock = StateLock(fd, self.lock_file)
        try:
            if self._socket_answers():
                raise busy
            with contextlib.suppress(FileNotFoundError):
                self.control_socket.unlink()
        except BaseException:
            lock.release()
            raise
        return lock

    def _socket_answers(self) -> bool:
        path = self.control_socket
        if not os.path.exists(path):
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        finally:
            probe.close()
        return True
