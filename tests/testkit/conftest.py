"""The test kit's own tests use its pytest plugin's fixtures (imported: a conftest below the
rootdir cannot set ``pytest_plugins``) and a three-member cluster that skips, with the
daemon's reason, while joining is not wired into the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from microtrio import MicrotrioError
from microtrio.testing import TestCluster, open_cluster, plugin
from microtrio.testing.plugin import microtrio_args, microtrio_cluster

__all__ = ["microtrio_args", "microtrio_cluster"]


def pytest_configure(config: pytest.Config) -> None:
    plugin.pytest_configure(config)


def skip_if_joining_unsupported(exc: MicrotrioError) -> None:
    if "not supported" in str(exc):
        pytest.skip(reason=f"joining is not wired into the daemon yet: {exc}")


@pytest.fixture
async def cluster3(tmp_path: Path) -> AsyncIterator[TestCluster]:
    async with AsyncExitStack() as stack:
        try:
            cluster = await stack.enter_async_context(open_cluster(3, tmp_path=tmp_path))
        except MicrotrioError as exc:
            skip_if_joining_unsupported(exc)
            raise
        yield cluster
