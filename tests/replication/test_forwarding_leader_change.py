"""A request forwarded to the leader fails (outcome unknown) as soon as this member sees
another leader, without a watcher task per request: the driver fails it."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from microtrio._errors import OutcomeUnknownError, UnavailableError
from microtrio._replication._forwarding import Forwarding
from microtrio._replication._wire import ExecuteResult, ForwardExecute, ForwardStatus


class _Transport:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, messages: Any) -> None:
        self.sent.extend(messages)


def _forwarding() -> tuple[Forwarding, _Transport]:
    transport = _Transport()
    fwd = Forwarding(
        1,
        transport=transport,  # type: ignore[arg-type]
        rng=random.Random(5),
        remote_limit=4,
        name="m1",
    )
    return fwd, transport


async def test_a_leader_change_fails_requests_to_the_old_leader_only() -> None:
    fwd, transport = _forwarding()
    outcomes: dict[int, object] = {}

    async def ask(leader: int) -> None:
        try:
            outcomes[leader] = await fwd.execute_remote(leader, b"q")
        except UnavailableError as exc:
            outcomes[leader] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 2)
            nursery.start_soon(ask, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(m.dst for m in transport.sent if isinstance(m, ForwardExecute)) == [2, 3]
            fwd.leader_changed(3)  # 3 leads now: the request to 2 has an unknown outcome
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(outcomes.get(2), UnavailableError)
            assert 3 not in outcomes
            to_3 = next(m for m in transport.sent if m.dst == 3)
            answer = ExecuteResult(3, 1, to_3.request_id, ForwardStatus.OK, 9, 3, b"r")
            assert fwd.handle(None, answer) is None  # type: ignore[arg-type]
    assert outcomes[3] == answer


async def test_the_committer_reports_a_leader_change_as_an_unknown_outcome() -> None:
    from microtrio._replication._raftdb import RaftCommitter

    class _Driver:
        config = type("C", (), {"tick_interval": 0.1})()

    committer = RaftCommitter(_Driver())  # type: ignore[arg-type]

    async def call() -> bytes:
        raise UnavailableError("the leader changed while it was asked")

    with trio.fail_after(10), pytest.raises(OutcomeUnknownError, match="interrupted"):
        await committer._ask(2, call, 5.0)
