"""``MetricsRegistry.add_async_collector`` and ``refresh``: values appear after a refresh,
a failing or slow collector publishes nothing (and does not hold the scrape), removal works."""

from __future__ import annotations

import logging

import pytest
import trio

from microtrio import ValidationError
from microtrio._metrics import Family, MetricsRegistry, Sample

FAMILY = Family("microtrio_test_value", "gauge", "A test value")


async def test_values_come_from_the_last_refresh() -> None:
    registry = MetricsRegistry()
    values = iter([3, 5])

    async def collect() -> list[Sample]:
        await trio.lowlevel.checkpoint()
        return [Sample("microtrio_test_value", next(values), {"k": "v"})]

    remove = registry.add_async_collector(collect, families=[FAMILY])
    assert 'microtrio_test_value{k="v"}' not in registry.render()  # never refreshed yet
    assert "# TYPE microtrio_test_value gauge" in registry.render()
    with trio.fail_after(5):
        await registry.refresh()
        assert 'microtrio_test_value{k="v"} 3\n' in registry.render()
        await registry.refresh()
    assert 'microtrio_test_value{k="v"} 5\n' in registry.render()
    remove()
    assert "microtrio_test_value" not in registry.render()
    assert "microtrio_test_value" not in registry.names()
    with trio.fail_after(5):
        await registry.refresh()  # nothing left to run


async def test_failing_and_slow_collectors_publish_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = MetricsRegistry()
    fail = trio.Event()

    async def flaky() -> list[Sample]:
        if fail.is_set():
            raise RuntimeError("boom")
        return [Sample("microtrio_test_value", 1)]

    async def stuck() -> list[Sample]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    registry.add_async_collector(flaky, families=[FAMILY])
    registry.add_async_collector(stuck, families=[Family("microtrio_test_stuck", "gauge", "x")])
    caplog.set_level(logging.WARNING, logger="microtrio.metrics")
    with trio.fail_after(10):
        await registry.refresh(timeout=0.05)
        assert "microtrio_test_value 1\n" in registry.render()
        fail.set()
        await registry.refresh(timeout=0.05)
    text = registry.render()
    assert "microtrio_test_value 1" not in text
    assert "# TYPE microtrio_test_stuck gauge" in text
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed" in m for m in messages)
    assert any("timed out" in m for m in messages)


def test_a_family_name_cannot_be_claimed_twice() -> None:
    registry = MetricsRegistry()

    async def collect() -> list[Sample]:
        return []

    registry.add_async_collector(collect, families=[FAMILY])
    with pytest.raises(ValidationError, match="already registered"):
        registry.add_async_collector(collect, families=[FAMILY])
