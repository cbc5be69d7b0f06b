"""The pytest plugin as a user enables it: a project whose top-level conftest sets
``pytest_plugins = ["microtrio.testing.plugin"]``, run by pytest in a subprocess."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from microtrio.testing import TestCluster
from microtrio.testing.plugin import ClusterFactory

CEILING = 120.0

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
EXAMPLE = re.compile(r"<!-- testkit-example: (\S+) -->\n```python\n(.*?)\n```", re.S)

EXTRA_TESTS = textwrap.dedent(
    """
    import trio

    async def test_two_clusters_in_one_test(microtrio_cluster):
        with trio.fail_after(60):
            first = await microtrio_cluster(1, names=["a"])
            second = await microtrio_cluster(1, names=["b"])
            assert first[0].state_dir != second[0].state_dir
            assert first.leader().name == "a" and second.leader().name == "b"
            assert (await first[0].app.status())["version"] == "0.0.0-test"  # default args
    """
)


def outcomes(output: str) -> dict[str, str]:
    return dict(re.findall(r"::(\w+) (PASSED|FAILED|ERROR|SKIPPED)", output))


async def test_the_documented_example_runs_in_a_user_project(tmp_path: Path) -> None:
    """The example of docs/testing.md, file by file, in a project of its own."""
    files = dict(EXAMPLE.findall(DOC.read_text()))
    assert set(files) == {"conftest.py", "test_notes.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    (tmp_path / "test_extra.py").write_text(EXTRA_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\naddopts = --strict-markers\nfilterwarnings = error\n"
    )
    with trio.fail_after(CEILING):
        result = await trio.run_process(
            [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    output = result.stdout.decode() + result.stderr.decode()
    found = outcomes(output)
    assert found["test_one_member"] == "PASSED", output
    assert found["test_two_clusters_in_one_test"] == "PASSED", output
    three = found["test_three_members_replicate"]
    assert three == "PASSED", output
    assert result.returncode == 0, output


@pytest.mark.microtrio_cluster(size=1, heartbeat_interval=0.25)
async def test_the_mark_sets_size_and_options(microtrio_cluster: ClusterFactory) -> None:
    with trio.fail_after(CEILING):
        cluster = await microtrio_cluster()
        assert isinstance(cluster, TestCluster) and len(cluster) == 1
        assert cluster[0].args.heartbeat_interval == 0.25
        assert cluster[0].args.version == "0.0.0-test"
