"""Shared fixtures of the cluster tests: an open single-member database, key pairs."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import apsw
import pytest
import trio

from microtrio._certs import CertKeyPair, generate_cert_key_pair
from microtrio._db import Database, ExtensionRegistry
from microtrio._db._schema import ensure_schema
from microtrio.raft import Role

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
T = TypeVar("T")


class InlineDatabase:
    """The cluster-database seam on an in-memory SQLite, run inline (no worker threads, so
    tests can use ``autojump_clock``); each transaction is a savepoint, as in Database."""

    def __init__(self) -> None:
        self.conn = apsw.Connection(":memory:")
        with self.conn:
            ensure_schema(self.conn, [])
        self.transactions = 0

    async def read(self, fn: Callable[[apsw.Connection], T], *, stale: bool = False) -> T:
        await trio.lowlevel.checkpoint()
        return fn(self.conn)

    async def transaction(self, fn: Callable[[apsw.Connection], T]) -> T:
        await trio.lowlevel.checkpoint()
        self.transactions += 1
        with self.conn:
            result: Any = fn(self.conn)
            if isinstance(result, apsw.Cursor):
                result = list(result)
        return result  # type: ignore[no-any-return]


async def inline(fn: Callable[[], T], /) -> T:
    """A BlockingRunner that runs file work inline (tests with autojump_clock)."""
    await trio.lowlevel.checkpoint()
    return fn()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """An open single-member database (local committer)."""
    async with trio.open_nursery() as nursery:
        database = Database(tmp_path / "database" / "db.bin", extensions=ExtensionRegistry())
        with trio.fail_after(20):
            await nursery.start(database.run)
            await database.open(bootstrap=True)
        yield database
        with trio.fail_after(20):
            await database.close()


_PAIRS: dict[str, CertKeyPair] = {}


def pair_for(name: str) -> CertKeyPair:
    """A key pair whose DNS SAN is ``name`` (made once per test session)."""
    if name not in _PAIRS:
        _PAIRS[name] = generate_cert_key_pair(name, common_name=f"user@{name}")
    return _PAIRS[name]


class FakeMembership:
    """An in-memory :class:`RaftMembership` that records calls; ``fail`` makes calls raise."""

    def __init__(self, conf: Mapping[int, Role], leader: int) -> None:
        self.conf = dict(conf)
        self.leader_id = leader
        self.calls: list[tuple[str, int, Role | None]] = []
        self.fail: Exception | None = None

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def add_member(self, node_id: int, address: str, role: Role) -> None:
        self._check()
        self.calls.append(("add", node_id, role))
        self.conf[node_id] = role

    async def change_role(self, node_id: int, role: Role) -> None:
        self._check()
        self.calls.append(("change", node_id, role))
        self.conf[node_id] = role

    async def remove_member(self, node_id: int) -> None:
        self._check()
        self.calls.append(("remove", node_id, None))
        self.conf.pop(node_id, None)

    async def transfer_leadership(self, to: int | None) -> int:
        self._check()
        assert to is not None
        self.calls.append(("transfer", to, None))
        self.leader_id = to
        return to

    def leader(self) -> int:
        return self.leader_id

    async def configuration(self) -> Mapping[int, Role]:
        return dict(self.conf)
