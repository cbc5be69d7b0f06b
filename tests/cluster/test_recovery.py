"""Offline recovery: the member YAML, validation, forced configuration, tarballs, import."""

from __future__ import annotations

import datetime
import io
import random
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from microtrio._cluster._recovery import (
    DqliteMember,
    backup_database,
    ensure_offline,
    force_configuration,
    import_recovery_tarball,
    last_configuration,
    members_yaml,
    parse_members_yaml,
    patch_lines,
    read_members,
    recover,
)
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._errors import StateError, UnavailableError, ValidationError
from microtrio._replication import node_id_for
from microtrio._replication._logstore import LogStore
from microtrio._state import DaemonConfig, StateDir
from microtrio.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftNode,
    Role,
    StateRole,
    bootstrap_state,
    encode_conf_state,
)

from .conftest import NOW, pair_for

NAMES = ["m1", "m2", "m3"]
ID = {n: node_id_for(n) for n in NAMES}


def addr(name: str, base: int = 9000) -> str:
    return f"127.0.0.1:{base + int(name[1:])}"


def make_member(tmp_path: Path, name: str) -> tuple[StateDir, Truststore]:
    """A stopped member: raft log (3 voters, then m3 made a stand-by), db file, info.yaml,
    daemon.yaml and truststore."""
    state = StateDir(tmp_path / name)
    state.create()
    raft = state.database_dir / "raft"
    with LogStore(raft) as store:
        boot = bootstrap_state(ConfState.of_voters(ID.values()))
        store.load()
        store.persist(boot.hard_state, boot.entries, None)
        conf = ConfState.from_dict({ID["m1"]: Role.VOTER, ID["m2"]: Role.VOTER,
                                    ID["m3"]: Role.STANDBY})
        store.persist(HardState(term=2, vote=ID["m1"], commit=3),
                      [Entry(2, 2, EntryType.CONF_CHANGE, encode_conf_state(conf)),
                       Entry(2, 3, EntryType.NORMAL, b"data")], None)
    (state.database_dir / "db.bin").write_bytes(f"database of {name}".encode())
    state.database_info.write_text(yaml.safe_dump({"ID": ID[name], "Address": addr(name)}))
    state.save_daemon_config(DaemonConfig(name=name, address=addr(name)))
    store_ = Truststore(state.truststore_dir)
    for n in NAMES:
        store_.add(TrustedMember(n, addr(n), pair_for(n).cert.decode()))
    return state, store_


def test_read_and_render_members(tmp_path: Path) -> None:
    state, store = make_member(tmp_path, "m1")
    members = read_members(state, store.members())
    assert [(m.name, m.address, m.role) for m in members] == [
        ("m1", addr("m1"), Role.VOTER), ("m2", addr("m2"), Role.VOTER),
        ("m3", addr("m3"), Role.STANDBY)]
    text = members_yaml(members)
    assert text.startswith("#") and parse_members_yaml(text, members) == members
    store.remove("m2")
    with pytest.raises(StateError, match="no truststore entry"):
        read_members(state, store.members())


def edit(members: list[DqliteMember], **changes: Any) -> str:
    data = [m.to_dict() for m in members]
    for index, fields in changes.items():
        data[int(index[1:])].update(fields)
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", "Invalid YAML"),
        ("{}", "list"),
        ("- 5", "mapping"),
        ("__one__", "count changed"),
        ("__rename__", "must not change"),
        ("__noid__", "must not change"),
        ("__novoter__", "voter"),
        ("__dup__", "Duplicate"),
        ("__badaddr__", "Invalid address"),
        ("__badrole__", "Invalid role"),
    ],
)
def test_edit_validation(tmp_path: Path, text: str, message: str) -> None:
    state, store = make_member(tmp_path, "m1")
    current = read_members(state, store.members())
    text = {
        "__one__": yaml.safe_dump([current[0].to_dict()]),
        "__rename__": edit(current, i1={"name": "m9"}),
        "__noid__": edit(current, i1={"id": 12345}),
        "__novoter__": edit(current, i0={"role": "spare"}, i1={"role": "stand-by"}),
        "__dup__": edit(current, i1={"address": addr("m1")}),
        "__badaddr__": edit(current, i1={"address": "example.com:80"}),
        "__badrole__": edit(current, i1={"role": "leader"}),
    }.get(text, text)
    with pytest.raises(ValidationError, match=message):
        parse_members_yaml(text, current)


def test_patch_lines_quote() -> None:
    old = [DqliteMember(1, "a", "127.0.0.1:1", Role.VOTER), DqliteMember(2, "b", "10.0.0.1:1",
                                                                         Role.VOTER)]
    new = [DqliteMember(1, "a", "127.0.0.1:1", Role.VOTER), DqliteMember(2, "b", "10.0.0.2:7",
                                                                         Role.SPARE)]
    assert patch_lines(old, new) == [
        "UPDATE core_cluster_members SET address = '10.0.0.2:7' WHERE name = 'b';"]


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_recover_and_import(tmp_path: Path) -> None:
    state, store = make_member(tmp_path, "m1")
    current = read_members(state, store.members())
    # m1 keeps its address and vote, m2 moves to a new port and stays a voter, m3 is lost
    text = edit(current, i1={"address": addr("m2", 9100)}, i2={"role": "spare"})
    edited = parse_members_yaml(text, current)
    result = recover(state, store, own_name="m1", current=current, edited=edited, now=NOW)

    assert result.backup.name == "db_backup.2026-01-01T120000+0000.tar.gz"
    assert "database/db.bin" in tar_names(result.backup)
    names = tar_names(result.tarball)
    assert "db.bin" in names and "recovery.yaml" in names and "raft/hardstate" in names
    assert "info.yaml" not in names and "raft/LOCK" not in names
    assert state.patch_global_sql.read_text() == (
        f"UPDATE core_cluster_members SET address = '{addr('m2', 9100)}' WHERE name = 'm2';\n")
    assert Truststore(state.truststore_dir).load()[1].address == addr("m2", 9100)
    info = yaml.safe_load(state.database_info.read_text())
    assert info == {"ID": ID["m1"], "Address": addr("m1"), "Role": 0}

    # the forced configuration is the last one in the log, at a new term
    with LogStore(state.database_dir / "raft") as logstore:
        persisted = logstore.load()
    assert last_configuration(persisted).as_dict() == {
        ID["m1"]: Role.VOTER, ID["m2"]: Role.VOTER, ID["m3"]: Role.SPARE}
    assert persisted.hard_state.term == 3 and persisted.entries[-1].index == 4

    # m2 starts with the tarball: its database is swapped and its address is the new one
    other, other_store = make_member(tmp_path, "m2")
    shutil.copy(result.tarball, other.recovery_tarball)
    own = import_recovery_tarball(other, other_store, own_name="m2", now=NOW)
    assert own == DqliteMember(ID["m2"], "m2", addr("m2", 9100), Role.VOTER)
    assert (other.database_dir / "db.bin").read_bytes() == b"database of m1"
    assert yaml.safe_load(other.database_info.read_text())["Address"] == addr("m2", 9100)
    config = other.load_daemon_config()
    assert config is not None and config.address == addr("m2", 9100)
    assert other_store.by_name("m2") is not None
    assert other_store.by_name("m2").address == addr("m2", 9100)  # type: ignore[union-attr]
    assert not other.recovery_tarball.exists() and not (other.path / "recovery_db").exists()
    assert list(other.path.glob("db_backup.*.tar.gz"))
    with LogStore(other.database_dir / "raft") as logstore:
        assert last_configuration(logstore.load()) == last_configuration(persisted)
    assert import_recovery_tarball(other, other_store, own_name="m2", now=NOW) is None


def test_forced_single_voter_elects_itself(tmp_path: Path) -> None:
    state, store = make_member(tmp_path, "m1")
    current = read_members(state, store.members())
    edited = parse_members_yaml(edit(current, i1={"role": "spare"}, i2={"role": "spare"}),
                                current)
    recover(state, store, own_name="m1", current=current, edited=edited, now=NOW)
    with LogStore(state.database_dir / "raft") as logstore:
        persisted = logstore.load()
    node = RaftNode(Config(id=ID["m1"]), random.Random(1), persisted)
    for _ in range(40):
        node.tick()
        if node.has_ready():
            node.advance(node.ready())
    status = node.status()
    assert status.role is StateRole.LEADER and status.commit >= 4  # the forced entry commits


def test_force_never_reuses_a_logged_term(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    conf = ConfState.of_voters([1])
    with LogStore(raft) as store:
        store.load()  # a hard state behind its own log (written by an older version, say)
        store.persist(HardState(1, 0, 1), [Entry(1, 1, EntryType.CONF_CHANGE,
                                                 encode_conf_state(conf)),
                                           Entry(4, 2, EntryType.NORMAL, b"x")], None)
    members = [DqliteMember(1, "a", "127.0.0.1:1", Role.VOTER)]
    assert force_configuration(raft, 1, members) == 3
    with LogStore(raft) as store:
        persisted = store.load()
    assert persisted.entries[-1].term == 5 and persisted.hard_state.term == 5


def evil_tarball(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("recovery.yaml")
        data = b"[]"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        bad = tarfile.TarInfo({"abs": "/etc/evil", "dotdot": "raft/../../evil"}.get(kind, "x"))
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "recovery.yaml"
        elif kind == "device":
            bad.type = tarfile.CHRTYPE
        elif kind == "fifo":
            bad.type = tarfile.FIFOTYPE
        tar.addfile(bad, io.BytesIO(b"") if kind in ("abs", "dotdot") else None)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("abs", "absolute"), ("dotdot", "leaves"), ("symlink", "link"), ("hardlink", "link"),
     ("device", "not a regular file"), ("fifo", "not a regular file")],
)
def test_import_rejects_unsafe_tarball(tmp_path: Path, kind: str, message: str) -> None:
    state, store = make_member(tmp_path, "m2")
    evil_tarball(state.recovery_tarball, kind)
    with pytest.raises(StateError, match=message):
        import_recovery_tarball(state, store, own_name="m2", now=NOW)
    assert (state.database_dir / "db.bin").read_bytes() == b"database of m2"
    assert state.recovery_tarball.exists() and not (state.path / "recovery_db").exists()
    assert not (tmp_path / "evil").exists()


def test_import_rejects_tarball_without_this_member(tmp_path: Path) -> None:
    state, store = make_member(tmp_path, "m2")
    with tarfile.open(state.recovery_tarball, "w:gz") as tar:
        data = yaml.safe_dump([{"id": 7, "name": "zz", "address": "127.0.0.1:1",
                                "role": "voter"}]).encode()
        info = tarfile.TarInfo("recovery.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StateError, match="does not list this member"):
        import_recovery_tarball(state, store, own_name="m2", now=NOW)
    assert (state.database_dir / "db.bin").read_bytes() == b"database of m2"


def test_backup_name_uses_offset(tmp_path: Path) -> None:
    state, _ = make_member(tmp_path, "m1")
    tz = datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    path = backup_database(state, datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=tz))
    assert path.name == "db_backup.2026-03-04T050607-0530.tar.gz"


class Probe:
    def __init__(self, address: str) -> None:
        self.address = address

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        if self.address.endswith(":1"):
            return {"name": "alive"}
        raise UnavailableError("refused")

    async def aclose(self) -> None:
        pass


async def test_ensure_offline(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.create()
    with trio.fail_after(20):
        await ensure_offline(state, ["10.0.0.1:2", "10.0.0.1:3"], Probe)
        with pytest.raises(StateError, match="still running: 10.0.0.1:1"):
            await ensure_offline(state, ["10.0.0.1:1", "10.0.0.1:2"], Probe)
        state.control_socket.touch()
        with pytest.raises(StateError, match="control.socket"):
            await ensure_offline(state, [], Probe)
