"""A set of running listeners, each with its own cancel scope and graceful-shutdown trigger.

The daemon starts every listener through :meth:`ListenerGroup.start` into its root nursery, so
one listener can be stopped (drained under a deadline, then cancelled) and restarted on its
own: the pre-init listener at init, the core listener at reset, additional servers when the
servers map changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast, final

import trio

from .._certs import SSLContextHolder

__all__ = ["ListenerGroup", "Running", "Serve"]

#: ``serve(*, shutdown_trigger, task_status)``: a listener loop (``serve_tcp``/``serve_unix``).
Serve = Callable[..., Awaitable[None]]


@final
@dataclass
class Running:
    """One running listener: its cancel scope, shutdown trigger and bound address."""

    scope: trio.CancelScope
    trigger: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    address: str = ""
    holder: SSLContextHolder | None = None


@final
class _Relay:
    """A ``task_status`` whose ``started`` calls a function (see ``ListenerGroup._task``)."""

    def __init__(self, on_started: Callable[[str | None], None]) -> None:
        self._on_started = on_started

    def started(self, value: str | None = None) -> None:
        self._on_started(value)


@final
class ListenerGroup:
    """The daemon's listeners by key (``unix``, ``core``, ``pre-init``, server names)."""

    def __init__(self, *, drain_timeout: float) -> None:
        self._drain_timeout = drain_timeout
        self._running: dict[str, Running] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def get(self, key: str) -> Running | None:
        return self._running.get(key)

    def keys(self) -> list[str]:
        return list(self._running)

    @property
    def addresses(self) -> dict[str, str]:
        return {k: r.address for k, r in self._running.items()}

    async def start(
        self,
        nursery: trio.Nursery,
        key: str,
        make_serve: Callable[[Running], Serve],
        holder: SSLContextHolder | None = None,
    ) -> str:
        """Start a listener in ``nursery``; return its bound address once it accepts."""
        running = Running(trio.CancelScope(), holder=holder)
        serve = make_serve(running)
        bound: str = await nursery.start(partial(self._task, key, serve, running))
        return bound

    async def _task(
        self, key: str, serve: Serve, running: Running, *, task_status: trio.TaskStatus[str]
    ) -> None:
        # ``serve`` runs in this very task (no inner nursery, so an error before it is
        # listening, such as an address in use, reaches the starter unwrapped).
        def started(bound: str | None = None) -> None:
            running.address = bound or ""
            self._running[key] = running
            task_status.started(running.address)

        try:
            with running.scope:
                await serve(
                    shutdown_trigger=running.trigger.wait,
                    task_status=cast("trio.TaskStatus[str]", _Relay(started)),
                )
        finally:
            if self._running.get(key) is running:
                del self._running[key]
            running.done.set()

    async def stop(self, key: str) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then cancel."""
        running = self._running.get(key)
        if running is None:
            return
        running.trigger.set()
        with trio.move_on_after(self._drain_timeout + 1.0):
            await running.done.wait()
        running.scope.cancel()
        await running.done.wait()

    async def stop_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for key in self.keys():
                nursery.start_soon(self.stop, key)
