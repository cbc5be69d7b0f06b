"""The test kit's own tests use its pytest plugin's fixtures (imported: a conftest below the
rootdir cannot set ``pytest_plugins``) and a three-member cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from microtrio.testing import TestCluster, open_cluster, plugin
from microtrio.testing.plugin import microtrio_args, microtrio_cluster

__all__ = ["microtrio_args", "microtrio_cluster"]


def pytest_configure(config: pytest.Config) -> None:
    plugin.pytest_configure(config)


@pytest.fixture
async def cluster3(tmp_path: Path) -> AsyncIterator[TestCluster]:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(open_cluster(3, tmp_path=tmp_path))
        yield cluster
