"""Freezing a daemon process's heap (``microtrio._heap``) and who asks for it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from microtrio import App, DaemonArgs
from microtrio._heap import freeze_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap is not frozen before or after (other tests share it)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freeze_collects_garbage_then_freezes_survivors(unfrozen: None) -> None:
    garbage = _Cycle()
    dead = weakref.ref(garbage)
    kept = _Cycle()
    del garbage  # only the collector can free a cycle
    assert dead() is not None and gc.get_freeze_count() == 0
    assert any(o is kept for o in gc.get_objects())
    frozen = freeze_heap("test")
    assert dead() is None  # collected first, not frozen with the rest
    assert frozen == gc.get_freeze_count() > 0
    # the survivors left the collector's generations: full collections skip them
    assert not any(o is kept for o in gc.get_objects())
    gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


async def test_in_process_member_leaves_the_heap_alone(tmp_path: Path, unfrozen: None) -> None:
    """App.run (a member inside a host application, or a test) does not freeze the host's
    heap unless asked; with freeze_heap=True the ready member has frozen it."""
    with trio.fail_after(60):
        for freeze in (False, True):
            gc.unfreeze()
            app = App(tmp_path / f"m-{freeze}")
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(app.run, DaemonArgs(version="1.0"), freeze_heap=freeze))
                assert (gc.get_freeze_count() > 0) is freeze
                await app.shutdown()
