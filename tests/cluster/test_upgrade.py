"""Rolling upgrades: the start decision, waiting woken by notify or 30 s, SCHEMA_UPDATE."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from microtrio._cluster._upgrade import (
    DATABASE_PATH,
    SchemaUpdateTrigger,
    StartAction,
    StartDecision,
    UpgradeWaker,
    _run_process,
    decide_on_start,
    notify_members,
    wait_for_upgrades,
)
from microtrio._db import MemberVersions, SchemaVersionError
from microtrio._errors import UnavailableError

EXTS = ["internal:a", "b"]


def mv(name: str, internal: int = 6, external: int = 2,
       exts: list[str] | None = EXTS) -> MemberVersions:
    return MemberVersions(name, internal, external, exts)


@pytest.mark.parametrize(
    ("other", "action"),
    [
        (mv("m2"), StartAction.START),
        (mv("m2", external=1), StartAction.WAIT),
        (mv("m2", internal=5), StartAction.WAIT),
        (mv("m2", exts=["internal:a"]), StartAction.WAIT),
        (mv("m2", exts=None), StartAction.WAIT),  # a nil list counts as behind
        (mv("m2", external=3), StartAction.REFUSE),
        (mv("m2", exts=EXTS + ["c"]), StartAction.REFUSE),
    ],
)
def test_decide_on_start(other: MemberVersions, action: StartAction) -> None:
    decision = decide_on_start(mv("m1"), [mv("m1"), mv("m3"), other])
    assert decision.action is action
    if action is StartAction.REFUSE:
        assert "please upgrade" in decision.message
    if action is StartAction.WAIT:
        assert decision.behind == ("m2",)
        assert decision.message == "1 cluster members have not yet received the update"


async def test_wait_woken_by_notify_or_retry(autojump_clock: trio.testing.MockClock) -> None:
    waker = UpgradeWaker()
    answers = [StartAction.WAIT, StartAction.WAIT, StartAction.WAIT, StartAction.START]
    checks: list[float] = []
    waiting: list[StartDecision] = []

    async def check() -> StartDecision:
        checks.append(trio.current_time())
        return StartDecision(answers.pop(0), behind=("m2",))

    async def notifier() -> None:
        await trio.sleep(5)
        waker.notify()  # wakes the first wait early
        await trio.sleep(40)
        waker.notify()

    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier)
            decision = await wait_for_upgrades(check, waker=waker, on_waiting=waiting.append)
    assert decision.action is StartAction.START
    # 0: wait, 5: notified, 35: retry after 30 s, 45: notified
    assert checks == [0, 5, 35, 45]
    assert len(waiting) == 3


async def test_notification_between_checks_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waker = UpgradeWaker()
    calls = 0

    async def check() -> StartDecision:
        nonlocal calls
        calls += 1
        if calls == 1:
            waker.notify()  # arrives while checking, before the wait begins
            return StartDecision(StartAction.WAIT, behind=("m2",))
        return StartDecision(StartAction.START)

    with trio.fail_after(100):
        start = trio.current_time()
        await wait_for_upgrades(check, waker=waker)
    assert trio.current_time() == start  # no 30 s sleep


async def test_wait_refuses_when_behind(autojump_clock: trio.testing.MockClock) -> None:
    async def check() -> StartDecision:
        return decide_on_start(mv("m1", external=1), [mv("m2")])

    with pytest.raises(SchemaVersionError, match="please upgrade"), trio.fail_after(10):
        await wait_for_upgrades(check, waker=UpgradeWaker())


async def test_schema_update_trigger(autojump_clock: trio.testing.MockClock) -> None:
    ran: list[tuple[float, Sequence[str]]] = []

    async def runner(argv: Sequence[str]) -> int:
        ran.append((trio.current_time(), list(argv)))
        await trio.sleep(1)
        return 0

    rng = random.Random(3)
    expected_delay = random.Random(3).randint(0, 29)
    trigger = SchemaUpdateTrigger(environ={"SCHEMA_UPDATE": "/usr/bin/upgrade-me"}, rng=rng,
                                  runner=runner)
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await nursery.start(trigger.run)
            trigger.request()
            trigger.request()  # merged with the pending one
            await trio.sleep(31)
            assert ran == [(expected_delay, ["/usr/bin/upgrade-me"])]
            trigger.request()
            await trio.sleep(31)
            nursery.cancel_scope.cancel()
    assert len(ran) == 2 and trigger.runs == 2
    assert 0 <= expected_delay <= 29


async def test_schema_update_trigger_without_variable_only_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def runner(argv: Sequence[str]) -> int:
        raise AssertionError("must not run")

    caplog.set_level(logging.INFO, logger="microtrio.cluster")
    trigger = SchemaUpdateTrigger(name="m1", environ={}, runner=runner)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(trigger.run)
            trigger.request()
            await trio.sleep(40)
            nursery.cancel_scope.cancel()
    assert "set SCHEMA_UPDATE" in caplog.text and trigger.runs == 0


async def test_schema_update_real_process(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "update.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    done = trio.Event()
    codes: list[int] = []

    async def runner(argv: Sequence[str]) -> int:
        codes.append(await _run_process(argv))  # the default runner, observed
        done.set()
        return codes[-1]

    trigger = SchemaUpdateTrigger(environ={"SCHEMA_UPDATE": str(script)}, max_delay=0,
                                  runner=runner)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(trigger.run)
            trigger.request()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert marker.exists() and codes == [0]


class FakeClient:
    def __init__(self, address: str, log: list[tuple[str, str, str]]) -> None:
        self.address, self.log = address, log

    async def query(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        if self.address.endswith(":2"):
            await trio.sleep_forever()
        if self.address.endswith(":3"):
            raise UnavailableError("refused")
        self.log.append((self.address, method, path))
        return None

    async def aclose(self) -> None:
        pass


async def test_notify_members(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, str, str]] = []
    with trio.fail_after(100):
        start = trio.current_time()
        results = await notify_members(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"],
                                       lambda a: FakeClient(a, log), timeout=5)
    assert trio.current_time() - start == pytest.approx(5)
    assert results == {"10.0.0.1:1": True, "10.0.0.1:2": False, "10.0.0.1:3": False}
    assert log == [("10.0.0.1:1", "PATCH", DATABASE_PATH)]
