"""pytest fixtures for microtrio applications (a pytest-trio plugin).

Enable it in your top-level ``conftest.py``::

    pytest_plugins = ["microtrio.testing.plugin"]

Fixtures:

* ``microtrio_cluster``: a factory, ``await microtrio_cluster(size=None, *, args=None, ...)``
  starts a :class:`~microtrio.testing.TestCluster` under the test's ``tmp_path`` and returns
  it; every cluster it started is stopped when the test ends. ``size`` defaults to the
  ``@pytest.mark.microtrio_cluster(size=N)`` mark, else :data:`DEFAULT_SIZE`; other keyword
  arguments go to :func:`~microtrio.testing.open_cluster`, with the mark's keyword arguments
  (for example ``heartbeat_interval``) as defaults.
* ``microtrio_args``: the ``DaemonArgs`` (or ``f(name) -> DaemonArgs``) the factory uses when
  called without ``args``; override this fixture to test your own application everywhere.

The tests must run under pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from .._daemon import DaemonArgs
from ._cluster import ArgsFactory, TestCluster, open_cluster

__all__ = ["DEFAULT_SIZE", "ClusterFactory"]

#: Members of a cluster started without a size or a mark.
DEFAULT_SIZE = 3

_MARK = "microtrio_cluster"


class ClusterFactory(Protocol):
    """The type of the ``microtrio_cluster`` fixture."""

    async def __call__(
        self, size: int | None = None, *, args: ArgsFactory | None = None, **kwargs: Any
    ) -> TestCluster: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARK}(size=3, **kwargs): size and open_cluster() options of the "
        "microtrio_cluster fixture",
    )


@pytest.fixture
def microtrio_args() -> ArgsFactory:
    """Daemon arguments of the members (default: a bare application at version 0.0.0-test);
    override in your conftest to run your own application."""
    return DaemonArgs(version="0.0.0-test")


@pytest.fixture
async def microtrio_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, microtrio_args: ArgsFactory
) -> AsyncIterator[ClusterFactory]:
    """A factory of test clusters, stopped at the end of the test."""
    mark = request.node.get_closest_marker(_MARK)
    mark_kwargs: dict[str, Any] = dict(mark.kwargs) if mark is not None else {}
    if mark is not None and mark.args:
        mark_kwargs.setdefault("size", mark.args[0])
    started = 0
    stop = trio.Event()

    async def hold(
        size: int, options: dict[str, Any], *, task_status: trio.TaskStatus[TestCluster]
    ) -> None:
        # The cluster's nursery is entered and left in this task of the fixture's nursery,
        # whichever task called the factory.
        async with open_cluster(size, **options) as cluster:
            task_status.started(cluster)
            await stop.wait()

    async with trio.open_nursery() as nursery:

        async def factory(
            size: int | None = None, *, args: ArgsFactory | None = None, **kwargs: Any
        ) -> TestCluster:
            nonlocal started
            options = {**mark_kwargs, **kwargs}
            chosen = size if size is not None else int(options.pop("size", DEFAULT_SIZE))
            options.pop("size", None)
            started += 1
            options["tmp_path"] = tmp_path / f"cluster{started}"
            options["args"] = args if args is not None else microtrio_args
            cluster: TestCluster = await nursery.start(hold, chosen, options)
            return cluster

        yield factory
        stop.set()
