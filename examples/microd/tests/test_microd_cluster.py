"""The example application on a three-member ``microtrio.testing`` cluster: its schema updates
and API extensions on every member, a write replicated everywhere, ``POST /1.0/extended``
fanning out to the two other members over mutual TLS, and its hooks run on the members they
concern (each log record names its member: ``microtrio.MemberFilter``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from examples.microd import API_EXTENSIONS
from microtrio import MemberFilter
from microtrio.testing import TestCluster
from microtrio.testing.plugin import ClusterFactory

CEILING = 150.0

pytestmark = pytest.mark.microtrio_cluster(size=3)


class _Hooks(logging.Handler):
    """The ``microd.hooks`` records, with the member that logged each one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(MemberFilter())
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((str(getattr(record, "member", None)), record.getMessage()))


@pytest.fixture
def hooks() -> Iterator[_Hooks]:
    handler = _Hooks()
    logger = logging.getLogger("microd.hooks")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def _tables(cluster: TestCluster) -> dict[str, list[tuple[object, ...]]]:
    return await cluster.read_all(
        "SELECT name FROM sqlite_master WHERE name IN ('extended_table', 'some_other_table')"
        " ORDER BY name"
    )


async def test_schema_extensions_and_replication(microtrio_cluster: ClusterFactory) -> None:
    with trio.fail_after(CEILING):
        cluster = await microtrio_cluster()
        tables = await _tables(cluster)
        assert tables == {m.name: [("extended_table",), ("some_other_table",)] for m in cluster}
        for member in cluster:
            status = await member.app.status()
            assert [e for e in status["extensions"] if not e.startswith("internal:")] == list(
                API_EXTENSIONS
            )
        async with cluster[2].local_client() as client:  # forwarded to the leader
            await client.sql_query("INSERT INTO extended_table (key, value) VALUES ('k', 'v')")
        await cluster.wait_replicated()
        rows = await cluster.read_all("SELECT key, value FROM extended_table")
        assert rows == {m.name: [("k", "v")] for m in cluster}


async def test_extended_fans_out_to_every_other_member(
    microtrio_cluster: ClusterFactory,
) -> None:
    with trio.fail_after(CEILING):
        cluster = await microtrio_cluster()
        first, *others = cluster.members
        async with first.local_client() as client:
            answer = await client.query("POST", "/1.0/extended", {"message": "hi"})
    lines = str(answer).split("\n")
    assert lines[0] == f"{first.name} ({first.address}) says 'hi'"
    assert sorted(lines[1:]) == sorted(
        f"{m.name} ({m.address}) received 'hi' from {first.address}" for m in others
    )


async def test_hooks_run_on_their_members(microtrio_cluster: ClusterFactory, hooks: _Hooks) -> None:
    with trio.fail_after(CEILING):
        cluster = await microtrio_cluster()
        names = [m.name for m in cluster]
        while not any("OnHeartbeat" in text for _, text in hooks.seen):  # noqa: ASYNC110
            await trio.sleep(0.05)  # a heartbeat round has run on the leader
    by_member: dict[str, list[str]] = {}
    for member, text in hooks.seen:
        by_member.setdefault(member, []).append(text)
    first, second, third = names
    assert f"{first}: PostBootstrap (config={{}})" in by_member[first]
    for joiner in (second, third):
        assert f"{joiner}: PreJoin (config={{}})" in by_member[joiner]
        assert f"{joiner}: PostJoin (config={{}})" in by_member[joiner]
        assert any(t.startswith(f"{first}: OnNewMember {joiner} at ") for t in by_member[first])
    for member, texts in by_member.items():  # every line was logged by the member it names
        assert all(t.startswith(f"{member}: ") for t in texts), (member, texts)
