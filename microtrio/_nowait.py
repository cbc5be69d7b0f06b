"""Taking a lock and queueing a value without trio's scheduler pass when neither waits.

trio's ``Lock.acquire``, ``CapacityLimiter.acquire`` and ``MemorySendChannel.send``
always yield once, even when the lock is free or the channel has room. On the write path
each such pass costs a scheduler round on every member for nothing (docs/benchmarks.md,
"The floor for one client"). These helpers try the ``_nowait`` form first and fall back
to the waiting one. They are not checkpoints when they do not wait: a caller that must
not start once cancelled calls ``trio.lowlevel.checkpoint_if_cancelled()`` first, and the
caller's loop must checkpoint elsewhere.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

__all__ = ["put", "take"]

_T = TypeVar("_T")


class _Acquirable(Protocol):
    def acquire_nowait(self) -> None: ...

    async def acquire(self) -> None: ...


async def take(lock: _Acquirable) -> None:
    """``await lock.acquire()``, with no scheduler pass when ``lock`` is free."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


async def put(channel: trio.MemorySendChannel[_T], value: _T) -> None:
    """``await channel.send(value)``, with no scheduler pass when there is room."""
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)
