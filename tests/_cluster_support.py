"""Shared helpers of the in-process cluster tests (``microtrio.testing``).

* :data:`KILLED_MEMBER_LEFTOVERS`: ``pytestmark`` entries for tests that kill or stop
  members. Cancelling a member cancels heartbeat requests whose body httpx is still sending:
  trio then finalises httpx's body generator itself and warns, and half-open sockets are left
  to the garbage collector. That is what a crash-stop looks like in one process (as in
  tests/clusterflow, see its conftest); every other warning stays an error.
* :func:`execute` and :func:`write_retrying`: SQL through a member's control socket, the
  latter retried while an election is in progress.
"""

from __future__ import annotations

import pytest
import trio

from microtrio import MicrotrioError
from microtrio.testing import TestMember

KILLED_MEMBER_LEFTOVERS = [
    pytest.mark.filterwarnings(
        "ignore:Async generator 'httpx._content.ByteStream.__aiter__':ResourceWarning"
    ),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <async_generator object ByteStream:"
        "pytest.PytestUnraisableExceptionWarning"
    ),
]


async def execute(member: TestMember, sql: str) -> None:
    """Run ``sql`` through ``member``'s control socket (forwarded to the leader)."""
    async with member.local_client() as client:
        await client.sql_query(sql)


async def write_retrying(member: TestMember, sql: str, *, pause: float = 0.05) -> None:
    """:func:`execute`, retried while there is no leader (bound it with ``fail_after``)."""
    while True:
        try:
            await execute(member, sql)
            return
        except MicrotrioError:
            await trio.sleep(pause)
