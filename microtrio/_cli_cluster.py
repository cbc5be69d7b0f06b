"""``cluster remove`` and ``cluster edit`` (recovery from quorum loss) for the CLI.

``cluster edit`` runs offline, on the stopped member with the freshest Raft log
(``docs/operations.md``, reference 7.8): it shows the Raft configuration as YAML in
``$EDITOR`` after a ``yes`` prompt on a terminal, or reads the edited YAML from stdin,
validates it, refuses while any member answers, then forces the configuration and writes
``recovery_db.tar.gz``, and prints where the tarball is and what to do with it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

import trio

from ._app import App
from ._certs import cluster_pin_bundle, load_cert_key_pair
from ._client import Client
from ._cluster._heartbeat import MemberClient
from ._cluster._recovery import (
    DqliteMember,
    ensure_offline,
    members_yaml,
    parse_members_yaml,
    read_members,
    recover,
)
from ._cluster._truststore import Truststore
from ._errors import MicrotrioError, StateError
from ._state import StateDir

__all__ = ["add_cluster_commands"]

#: A removal runs hooks on several members; give it time.
REMOVE_TIMEOUT = 120.0

_WARNING = """\
You should only run this command if:
 - A quorum of cluster members is permanently lost
 - You are *absolutely* sure all members are stopped (the daemon is not running anywhere)
 - This member has the most up to date copy of the database (the freshest Raft log)

Do you want to proceed? (yes/no): """


async def _cmd_remove(app: App, ns: argparse.Namespace) -> None:
    params = {"force": "1"} if ns.force else {}
    if ns.address:
        params["address"] = ns.address
    async with app.local_client() as client:
        await client.query("DELETE", f"/core/1.0/cluster/{quote(ns.name, safe='')}",
                           params=params, timeout=REMOVE_TIMEOUT)


def _edit_in_editor(text: str) -> str:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        subprocess.run([*shlex.split(editor), path], check=True)  # noqa: S603 - the user's
        with open(path, encoding="utf-8") as edited:
            return edited.read()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise MicrotrioError(f"The editor failed: {exc}") from exc
    finally:
        os.unlink(path)


def _read_edit(text: str) -> str:
    """The edited YAML: in ``$EDITOR`` after a ``yes`` on a terminal, else from stdin."""
    if sys.stdin.isatty():
        answer = input(_WARNING).strip().lower()
        if answer != "yes":
            raise MicrotrioError("Recovery aborted")
        return _edit_in_editor(text)
    return sys.stdin.read()


def _load(state: StateDir) -> tuple[str, Truststore, list[DqliteMember]]:
    config = state.load_daemon_config()
    if config is None:
        raise StateError(f"{state.path} is not an initialised member")
    truststore = Truststore(state.truststore_dir)
    truststore.load()
    return config.name, truststore, read_members(state, truststore.members())


def _factory(state: StateDir) -> Callable[[str], MemberClient]:
    pair = load_cert_key_pair(state.server_crt, state.server_key)
    pinned = cluster_pin_bundle(state)  # both certificates while a rotation is under way

    def build(address: str) -> MemberClient:
        return Client.tls(address, cert=pair, pinned=pinned)

    return build


async def _cmd_edit(app: App, ns: argparse.Namespace) -> None:
    state = app.state_dir
    own, truststore, current = await trio.to_thread.run_sync(_load, state)
    text = await trio.to_thread.run_sync(_read_edit, members_yaml(current))
    edited = parse_members_yaml(text, current)
    others = [m.address for m in truststore.members() if m.name != own]
    factory = await trio.to_thread.run_sync(_factory, state)
    await ensure_offline(state, others, factory)
    now = datetime.datetime.now(datetime.UTC)
    result = await trio.to_thread.run_sync(
        partial(recover, state, truststore, own_name=own, current=current, edited=edited,
                now=now)
    )
    print(f"Database backed up to {result.backup}")
    print(f"Recovery tarball written to {result.tarball}")
    print("Copy it into the state directory of every other surviving member before "
          "starting them; start this member too (it uses the new configuration already).")


def add_cluster_commands(
    csub: Any, command: Callable[..., argparse.ArgumentParser]
) -> None:
    """Register ``cluster remove`` and ``cluster edit`` on the ``cluster`` subparsers."""
    p = command("remove", _cmd_remove, "remove a member from the cluster", csub)
    p.add_argument("name", help="name of the member to remove")
    p.add_argument("-f", "--force", action="store_true",
                   help="go on when the member is unreachable or its hooks fail")
    p.add_argument("--address", default="",
                   help="the member's ip:port: must match when the member is known; also "
                        "removes the leftovers (Raft, truststore) of a member without a row")
    command("edit", _cmd_edit,
            "recover from quorum loss: edit the Raft configuration (every member stopped)",
            csub)
