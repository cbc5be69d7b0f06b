"""Options for the seeded Raft simulation.

``--raft-seeds N`` (or ``RAFT_SEEDS=N``) runs a campaign of N seeded schedules instead of the
CI default; ``RAFT_SIM_SEED=<seed>`` replays exactly one schedule (failures print the command).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--raft-seeds",
        type=int,
        default=None,
        help="number of seeded Raft simulation schedules to run (default: the CI amount)",
    )
