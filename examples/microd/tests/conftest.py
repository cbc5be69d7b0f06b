"""The example application's own tests run on ``microtrio.testing`` clusters: three members
of this application, real mutual TLS, joined with tokens.

In a project of your own, enable the fixtures with ``pytest_plugins =
["microtrio.testing.plugin"]`` in the top-level conftest; here, below the repository's
root, the fixtures are imported instead (pytest allows ``pytest_plugins`` only at the top).
Run them with ``python -m pytest examples/microd/tests`` from the repository root.
"""

from __future__ import annotations

import pytest

from examples.microd import daemon_args
from microtrio.testing import ArgsFactory, plugin
from microtrio.testing.plugin import microtrio_cluster

__all__ = ["microtrio_args", "microtrio_cluster"]


def pytest_configure(config: pytest.Config) -> None:
    plugin.pytest_configure(config)


@pytest.fixture
def microtrio_args() -> ArgsFactory:
    """Every member runs the example application (fast heartbeats come from the plugin)."""
    return daemon_args(drain_timeout=2.0)
