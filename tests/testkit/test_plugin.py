"""The pytest plugin as a user enables it: a project whose top-level conftest sets
``pytest_plugins = ["microtrio.testing.plugin"]``, run by pytest in a subprocess."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from microtrio.testing import TestCluster
from microtrio.testing.plugin import ClusterFactory

CEILING = 120.0

CONFTEST = 'pytest_plugins = ["microtrio.testing.plugin"]\n'

USER_TESTS = textwrap.dedent(
    """
    import pytest
    import trio

    import microtrio

    @pytest.fixture
    def microtrio_args():
        return microtrio.DaemonArgs(
            version="7.0",
            schema_updates=(microtrio.SchemaUpdate("CREATE TABLE pets (name TEXT)"),),
        )

    @pytest.mark.microtrio_cluster(size=1)
    async def test_user_app(microtrio_cluster):
        with trio.fail_after(60):
            cluster = await microtrio_cluster()
            assert len(cluster.members) == 1
            leader = await cluster.wait_for_leader()
            async with leader.local_client() as client:
                await client.sql_query("INSERT INTO pets VALUES ('rex')")
                assert (await client.status())["version"] == "7.0"
            await cluster.wait_replicated()
            assert await cluster.read_all("SELECT name FROM pets") == {"member1": [("rex",)]}

    async def test_two_clusters_in_one_test(microtrio_cluster):
        with trio.fail_after(60):
            first = await microtrio_cluster(1, names=["a"])
            second = await microtrio_cluster(1, names=["b"])
            assert first[0].state_dir != second[0].state_dir
            assert first.leader().name == "a" and second.leader().name == "b"
    """
)


async def test_a_user_project_runs_with_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\naddopts = --strict-markers\nfilterwarnings = error\n"
    )
    with trio.fail_after(CEILING):
        result = await trio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "2 passed" in output, output


@pytest.mark.microtrio_cluster(size=1, heartbeat_interval=0.25)
async def test_the_mark_sets_size_and_options(microtrio_cluster: ClusterFactory) -> None:
    with trio.fail_after(CEILING):
        cluster = await microtrio_cluster()
        assert isinstance(cluster, TestCluster) and len(cluster) == 1
        assert cluster[0].args.heartbeat_interval == 0.25
        assert cluster[0].args.version == "0.0.0-test"
