"""Offline recovery from quorum loss (reference 7.8): ``cluster edit`` and the import on start.

Theory of operation
-------------------
Every member is stopped. On the member with the freshest Raft log the operator runs
``cluster edit``, which uses these steps (all blocking file work; daemon and CLI code call
them through ``trio.to_thread.run_sync``):

1. :func:`read_members`: the last Raft configuration in ``database/raft`` (the newest
   configuration entry of the log, else the snapshot's) with names and addresses from the
   truststore, as ``DqliteMember`` rows (``id``, ``name``, ``address``, ``role``);
   :func:`members_yaml` renders them for ``$EDITOR`` (or stdin);
2. :func:`parse_members_yaml` validates the edit: same count, every ``(id, name)``
   unchanged, at least one voter, every address a valid, unique ``ip:port``;
3. :func:`ensure_offline` (async) refuses while ``control.socket`` exists or any member
   answers ``GET /core/1.0``;
4. :func:`recover`: backs ``database/`` up to ``db_backup.<YYYY-MM-DDTHHMMSS+zzzz>.tar.gz``,
   forces the new configuration into the Raft log (:func:`force_configuration`), rewrites
   its own ``info.yaml``, writes ``recovery_db.tar.gz`` (the database directory without
   ``info.yaml``, plus ``recovery.yaml``), updates its ``daemon.yaml`` address and
   truststore, and appends ``UPDATE core_cluster_members SET address=...`` lines to
   ``patch.global.sql`` for every changed address (run once by the database at start).

The operator copies the tarball into every other member's state directory. On start, a
member that finds it calls :func:`import_recovery_tarball` BEFORE opening the database: the
tarball is checked member by member (absolute paths, ``..``, links and devices are refused
with a clear error and nothing changes), unpacked into ``recovery_db/``, the old
``database/`` is backed up and replaced, ``info.yaml`` is written with the member's new
address from ``recovery.yaml``, ``daemon.yaml`` and the truststore get the new addresses,
and the tarball is deleted.

Forcing the configuration offline works because the Raft core's
``RaftNode.force_new_configuration`` needs no peers: the stored state is loaded into a node,
the configuration is appended at a new term, and the resulting Ready (the new entry and
hard state) is persisted; nothing is sent. The entry commits once the new voters, all
started from the same log, elect a leader that commits an entry of its own term.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import shutil
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import trio
import yaml

from .._errors import MicrotrioError, StateError, ValidationError
from .._replication import node_id_for
from .._replication._logstore import LogStore
from .._state import DaemonConfig, StateDir, atomic_write
from ..raft import (
    Config,
    ConfState,
    EntryType,
    HardState,
    PersistedState,
    RaftNode,
    Role,
    decode_conf_state,
)
from ._heartbeat import ClientFactory
from ._names import validate_address, validate_name
from ._truststore import TrustedMember, Truststore

__all__ = [
    "RECOVERY_YAML",
    "DqliteMember",
    "RecoveryResult",
    "backup_database",
    "ensure_offline",
    "force_configuration",
    "import_recovery_tarball",
    "last_configuration",
    "members_yaml",
    "parse_members_yaml",
    "patch_lines",
    "read_members",
    "recover",
    "write_recovery_tarball",
]

logger = logging.getLogger("microtrio.cluster")

RECOVERY_YAML = "recovery.yaml"
_ROLE_CODES = {Role.VOTER: 0, Role.STANDBY: 1, Role.SPARE: 2}
_SKIP = {"info.yaml", "LOCK"}


@final
@dataclass(frozen=True, slots=True)
class DqliteMember:
    """One Raft member as ``cluster edit`` shows it (``DqliteMember``)."""

    id: int
    name: str
    address: str
    role: Role

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "address": self.address,
                "role": str(self.role)}

    @classmethod
    def from_dict(cls, data: object) -> DqliteMember:
        if not isinstance(data, dict):
            raise ValidationError("Each member must be a mapping of id, name, address, role")
        node_id, name, address, role = (data.get(k) for k in ("id", "name", "address", "role"))
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
            raise ValidationError(f"Invalid member id {node_id!r}")
        try:
            parsed_role = Role(str(role))
        except ValueError:
            raise ValidationError(
                f"Invalid role {role!r} for {name!r}: must be voter, stand-by or spare"
            ) from None
        if not isinstance(name, str):
            raise ValidationError(f"Invalid member name {name!r}")
        return cls(id=node_id, name=name, address=validate_address(address), role=parsed_role)


# -- reading the configuration ---------------------------------------------------------


def last_configuration(persisted: PersistedState) -> ConfState:
    """The newest configuration in a stored Raft state (log entries, else the snapshot)."""
    for entry in reversed(persisted.entries):
        if entry.type is EntryType.CONF_CHANGE:
            return decode_conf_state(entry.data)
    if persisted.snapshot is not None:
        return persisted.snapshot.meta.conf
    raise StateError("The Raft log holds no configuration")


def _load(raft_dir: Path) -> PersistedState:
    if not raft_dir.is_dir():
        raise StateError(f"No Raft state in {raft_dir}")
    store = LogStore(raft_dir)
    try:
        return store.load()
    finally:
        store.close()


def read_members(state: StateDir, truststore: Iterable[TrustedMember]) -> list[DqliteMember]:
    """The current Raft configuration with names and addresses from the truststore."""
    conf = last_configuration(_load(state.database_dir / "raft"))
    by_id = {node_id_for(m.name): m for m in truststore}
    result = []
    for node_id, role in sorted(conf.as_dict().items()):
        member = by_id.get(node_id)
        if member is None:
            raise StateError(f"Raft member {node_id} has no truststore entry")
        result.append(DqliteMember(node_id, member.name, member.address, role))
    return sorted(result, key=lambda m: m.name)


_HEADER = """\
# Recovery of the cluster's Raft configuration (every member must be stopped).
# Change only the roles (voter, stand-by, spare) and the addresses (ip:port).
# Keep at least one voter; do not add, remove or rename members.
"""


def members_yaml(members: Sequence[DqliteMember]) -> str:
    """The YAML the operator edits (with an explanatory comment header)."""
    return _HEADER + yaml.safe_dump([m.to_dict() for m in members], sort_keys=False)


def parse_members_yaml(text: str, current: Sequence[DqliteMember]) -> list[DqliteMember]:
    """Validate an edited member list against ``current``; ValidationError says why."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"Invalid YAML: {exc}") from exc
    if not isinstance(data, list):
        raise ValidationError("Expected a list of members")
    edited = [DqliteMember.from_dict(item) for item in data]
    if len(edited) != len(current):
        raise ValidationError(
            f"Member count changed from {len(current)} to {len(edited)}: members cannot be "
            "added or removed during recovery"
        )
    if {(m.id, m.name) for m in edited} != {(m.id, m.name) for m in current}:
        raise ValidationError("Member ids and names must not change")
    if not any(m.role is Role.VOTER for m in edited):
        raise ValidationError("At least one member must be a voter")
    addresses = [m.address for m in edited]
    duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
    if duplicates:
        raise ValidationError(f"Duplicate addresses: {', '.join(duplicates)}")
    return sorted(edited, key=lambda m: m.name)


# -- the steps ---------------------------------------------------------------------------


def _timestamp(now: datetime.datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("need an aware datetime")
    return now.strftime("%Y-%m-%dT%H%M%S%z")


def _add_tree(tar: tarfile.TarFile, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.name in _SKIP or path.name.endswith("-shm") or path.is_symlink():
            continue
        arcname = f"{prefix}/{rel.as_posix()}" if prefix else rel.as_posix()
        tar.add(path, arcname=arcname, recursive=False)


def backup_database(state: StateDir, now: datetime.datetime) -> Path:
    """Write ``db_backup.<YYYY-MM-DDTHHMMSS+zzzz>.tar.gz`` holding ``database/``."""
    target = state.path / f"db_backup.{_timestamp(now)}.tar.gz"
    try:
        with tarfile.open(target, "w:gz") as tar:
            tar.add(state.database_dir, arcname="database", recursive=False)
            _add_tree(tar, state.database_dir, "database")
    except OSError as exc:
        raise StateError(f"Cannot back up {state.database_dir}: {exc}") from exc
    logger.info("database backed up to %s", target)
    return target


def force_configuration(raft_dir: Path, node_id: int, members: Sequence[DqliteMember]) -> int:
    """Append the forced configuration to the stored Raft log (offline); return its index."""
    conf = ConfState.from_dict({m.id: m.role for m in members})
    store = LogStore(raft_dir)
    try:
        persisted = store.load()
        last_term = persisted.entries[-1].term if persisted.entries else 0
        if persisted.hard_state.term < last_term:  # never reuse a term the log already has
            hs = persisted.hard_state
            persisted = PersistedState(
                HardState(last_term, 0, hs.commit), persisted.snapshot, persisted.entries
            )
        node = RaftNode(Config(id=node_id), random.Random(node_id), persisted)
        index = node.force_new_configuration(conf)
        ready = node.ready()
        store.persist(ready.hard_state, ready.entries, None)
        node.advance(ready)
    finally:
        store.close()
    logger.warning("raft configuration forced to %s at index %d", conf.as_dict(), index)
    return index


def _write_info(state: StateDir, member: DqliteMember) -> None:
    info = {"ID": member.id, "Address": member.address, "Role": _ROLE_CODES[member.role]}
    atomic_write(state.database_info, yaml.safe_dump(info, sort_keys=False), 0o644)


def write_recovery_tarball(state: StateDir, members: Sequence[DqliteMember]) -> Path:
    """``recovery_db.tar.gz``: the database directory without ``info.yaml``, and
    ``recovery.yaml`` with the member list."""
    target = state.recovery_tarball
    listing = yaml.safe_dump([m.to_dict() for m in members], sort_keys=False).encode()
    staging = state.path / RECOVERY_YAML
    try:
        staging.write_bytes(listing)
        with tarfile.open(target, "w:gz") as tar:
            _add_tree(tar, state.database_dir, "")
            tar.add(staging, arcname=RECOVERY_YAML)
    except OSError as exc:
        raise StateError(f"Cannot write {target}: {exc}") from exc
    finally:
        staging.unlink(missing_ok=True)
    return target


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def patch_lines(old: Sequence[DqliteMember], new: Sequence[DqliteMember]) -> list[str]:
    """``UPDATE core_cluster_members SET address=... WHERE name=...;`` per changed address."""
    before = {m.name: m.address for m in old}
    return [
        f"UPDATE core_cluster_members SET address = {_sql_text(m.address)} "
        f"WHERE name = {_sql_text(m.name)};"
        for m in new
        if before.get(m.name) != m.address
    ]


def _append_patch(state: StateDir, lines: Sequence[str]) -> None:
    if lines:
        with open(state.patch_global_sql, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))


def _update_addresses(
    state: StateDir, truststore: Truststore, members: Sequence[DqliteMember], own_name: str
) -> None:
    """New addresses into ``daemon.yaml`` (own) and the truststore (everyone known)."""
    for member in members:
        entry = truststore.by_name(member.name)
        if entry is not None and entry.address != member.address:
            truststore.add(TrustedMember(member.name, member.address, entry.certificate))
    own = next((m for m in members if m.name == own_name), None)
    config = state.load_daemon_config()
    if own is not None and config is not None and config.address != own.address:
        state.save_daemon_config(
            DaemonConfig(name=config.name, address=own.address, servers=config.servers)
        )


@final
@dataclass(frozen=True, slots=True)
class RecoveryResult:
    backup: Path
    tarball: Path
    patch: tuple[str, ...]


def recover(
    state: StateDir,
    truststore: Truststore,
    *,
    own_name: str,
    current: Sequence[DqliteMember],
    edited: Sequence[DqliteMember],
    now: datetime.datetime,
) -> RecoveryResult:
    """Steps 4-7 of the recovery on this (stopped) member; see the module docstring."""
    own = next((m for m in edited if m.name == own_name), None)
    if own is None:
        raise ValidationError(f"This member ({own_name}) is not in the member list")
    backup = backup_database(state, now)
    force_configuration(state.database_dir / "raft", own.id, edited)
    _write_info(state, own)
    tarball = write_recovery_tarball(state, edited)
    lines = patch_lines(current, edited)
    _update_addresses(state, truststore, edited, own_name)
    _append_patch(state, lines)
    logger.warning("recovery written to %s; copy it into every other member's state "
                   "directory before starting them", tarball)
    return RecoveryResult(backup=backup, tarball=tarball, patch=tuple(lines))


async def ensure_offline(
    state: StateDir,
    addresses: Sequence[str],
    client_factory: ClientFactory,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> None:
    """Refuse (StateError) while this daemon runs or any member answers ``GET /core/1.0``."""
    if await trio.to_thread.run_sync(state.control_socket.exists):
        raise StateError("The daemon is running (control.socket exists): stop it first")
    alive: list[str] = []

    async def probe(address: str) -> None:
        with trio.move_on_after(timeout):
            try:
                client = client_factory(address)
                try:
                    await client.query("GET", "/core/1.0", timeout=timeout)
                    alive.append(address)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await client.aclose()
            except MicrotrioError:
                pass

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(probe, address)
    if alive:
        raise StateError(
            "Cluster members are still running: " + ", ".join(sorted(alive))
            + "; stop every member before recovery"
        )


# -- the import on start -----------------------------------------------------------------


def _check_member(info: tarfile.TarInfo) -> None:
    name = info.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise StateError(f"Refusing recovery tarball: absolute path {name!r}")
    if ".." in parts or ".." in name.split("/"):
        raise StateError(f"Refusing recovery tarball: path {name!r} leaves the directory")
    if info.issym() or info.islnk():
        raise StateError(f"Refusing recovery tarball: {name!r} is a link")
    if not (info.isreg() or info.isdir()):
        raise StateError(f"Refusing recovery tarball: {name!r} is not a regular file")


def _unpack(tarball: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(mode=0o700)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = tar.getmembers()
            for info in members:
                _check_member(info)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StateError(f"Cannot unpack recovery tarball {tarball}: {exc}") from exc


def import_recovery_tarball(
    state: StateDir,
    truststore: Truststore,
    *,
    own_name: str,
    now: datetime.datetime,
) -> DqliteMember | None:
    """Import ``recovery_db.tar.gz`` if present (before the database opens); return this
    member's new entry, or None when there is no tarball. StateError when the tarball is
    unsafe or does not name this member (then nothing has changed)."""
    tarball = state.recovery_tarball
    if not tarball.is_file():
        return None
    validate_name(own_name)
    unpack_dir = state.path / "recovery_db"
    try:
        _unpack(tarball, unpack_dir)
        members = _read_recovery_yaml(unpack_dir / RECOVERY_YAML)
    except BaseException:
        shutil.rmtree(unpack_dir, ignore_errors=True)
        raise
    own = next((m for m in members if m.id == node_id_for(own_name)), None)
    if own is None or own.name != own_name:
        shutil.rmtree(unpack_dir, ignore_errors=True)
        raise StateError(f"The recovery tarball does not list this member ({own_name})")
    if state.database_dir.exists():
        backup_database(state, now)
    (unpack_dir / RECOVERY_YAML).unlink()
    old = state.path / "database.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if state.database_dir.exists():
        state.database_dir.rename(old)
    unpack_dir.rename(state.database_dir)
    os.chmod(state.database_dir, 0o700)
    shutil.rmtree(old, ignore_errors=True)
    _write_info(state, own)
    _update_addresses(state, truststore, members, own_name)
    tarball.unlink()
    logger.warning("%s: imported the recovery database (address %s)", own_name, own.address)
    return own


def _read_recovery_yaml(path: Path) -> list[DqliteMember]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StateError(f"Recovery tarball has no readable {RECOVERY_YAML}: {exc}") from exc
    if not isinstance(data, list):
        raise StateError(f"Malformed {RECOVERY_YAML}: expected a list")
    try:
        return [DqliteMember.from_dict(item) for item in data]
    except ValidationError as exc:
        raise StateError(f"Malformed {RECOVERY_YAML}: {exc}") from exc

