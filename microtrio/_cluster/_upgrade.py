"""Rolling upgrades (reference 6.4-6.6): the start decision, the wait, the auto-update.

Theory of operation
-------------------
When a member that is not bootstrapping opens the database it records its own schema
versions and API extensions, and compares them with every non-``PENDING`` member
(:func:`decide_on_start`, on top of :func:`microtrio._db.compare_versions`):

* another member is ahead: this member must not start (:attr:`StartAction.REFUSE`, with a
  message telling the operator to upgrade it);
* some members are behind: it waits (:attr:`StartAction.WAIT`; database status "waiting
  for an upgrade") until a ``PATCH /core/internal/database`` notification
  (:meth:`UpgradeWaker.notify`) or 30 s pass, then checks again (:func:`wait_for_upgrades`);
* all equal: it starts (:attr:`StartAction.START`) and then tells every other member
  (:func:`notify_members`), which wakes the waiting ones.

:meth:`microtrio._db.Database.open` already runs this loop for the daemon's own start;
these pieces are the same rules as components, for the daemon's status reporting, for
``cluster list`` and for tests.

A member that hears from the leader's heartbeat that the cluster's schema is ahead of it
asks :class:`SchemaUpdateTrigger` to run the executable named by ``SCHEMA_UPDATE`` after a
random delay of 0-29 s (so that members do not all upgrade at once); without the variable
it only logs. Requests while one is pending are merged.
"""

from __future__ import annotations

import enum
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import final

import trio

from .._db import MemberVersions, SchemaVersionError, compare_versions
from .._errors import MicrotrioError
from ._heartbeat import ClientFactory

__all__ = [
    "DATABASE_PATH",
    "SCHEMA_UPDATE_ENV",
    "UPGRADE_RETRY_SECONDS",
    "SchemaUpdateTrigger",
    "StartAction",
    "StartDecision",
    "UpgradeWaker",
    "decide_on_start",
    "notify_members",
    "wait_for_upgrades",
]

logger = logging.getLogger("microtrio.cluster")

DATABASE_PATH = "/core/internal/database"
SCHEMA_UPDATE_ENV = "SCHEMA_UPDATE"
UPGRADE_RETRY_SECONDS = 30.0


class StartAction(enum.Enum):
    START = "start"
    WAIT = "wait"
    REFUSE = "refuse"


@final
@dataclass(frozen=True, slots=True)
class StartDecision:
    """What a starting member does; ``behind`` names the members still to upgrade."""

    action: StartAction
    behind: tuple[str, ...] = ()
    message: str = ""


def decide_on_start(own: MemberVersions, others: Iterable[MemberVersions]) -> StartDecision:
    """Compare this member with the other non-``PENDING`` members (reference 6.4)."""
    try:
        result = compare_versions(own, others)
    except SchemaVersionError as exc:
        return StartDecision(StartAction.REFUSE, message=str(exc))
    if result.waiting:
        return StartDecision(
            StartAction.WAIT,
            behind=result.behind,
            message=f"{len(result.behind)} cluster members have not yet received the update",
        )
    return StartDecision(StartAction.START)


@final
class UpgradeWaker:
    """Wakes members waiting for an upgrade; a notification is never lost, even when it
    arrives between two checks."""

    def __init__(self) -> None:
        self._generation = 0
        self._event = trio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """Another member finished its upgrade (``PATCH /core/internal/database``)."""
        self._generation += 1
        self._event.set()
        self._event = trio.Event()

    async def wait(self, since: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for a notification after generation ``since`` (True) or ``timeout`` (False)."""
        with trio.move_on_after(timeout):
            while self._generation == since:
                await self._event.wait()
            return True
        return False


async def wait_for_upgrades(
    check: Callable[[], Awaitable[StartDecision]],
    *,
    waker: UpgradeWaker,
    retry: float = UPGRADE_RETRY_SECONDS,
    on_waiting: Callable[[StartDecision], None] | None = None,
) -> StartDecision:
    """Check until nobody is behind; return the final START decision.

    ``check()`` records this member's versions and decides (normally
    :func:`decide_on_start` on the member rows). REFUSE raises
    :class:`~microtrio.SchemaVersionError` at once; WAIT calls ``on_waiting(decision)``
    (set the status "waiting for an upgrade") and sleeps until a notification or
    ``retry`` seconds.
    """
    while True:
        since = waker.generation
        decision = await check()
        if decision.action is StartAction.REFUSE:
            raise SchemaVersionError(decision.message)
        if decision.action is StartAction.START:
            return decision
        logger.warning("waiting for %d members to upgrade: %s", len(decision.behind),
                       ", ".join(decision.behind))
        if on_waiting is not None:
            on_waiting(decision)
        await waker.wait(since, retry)


async def notify_members(
    addresses: Sequence[str], client_factory: ClientFactory, *, timeout: float = 10.0  # noqa: ASYNC109
) -> dict[str, bool]:
    """``PATCH /core/internal/database`` to every address, concurrently (each bounded by
    ``timeout``); returns which answered. Failures are logged, never raised."""
    results: dict[str, bool] = {}

    async def one(address: str) -> None:
        results[address] = False
        with trio.move_on_after(timeout):
            try:
                client = client_factory(address)
                try:
                    await client.query("PATCH", DATABASE_PATH, timeout=timeout)
                    results[address] = True
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await client.aclose()
            except MicrotrioError as exc:
                logger.info("upgrade notification to %s failed: %s", address, exc)

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(one, address)
    return results


ProcessRunner = Callable[[Sequence[str]], Awaitable[int]]


async def _run_process(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    completed = await trio.run_process(list(argv), check=False, env=env)
    return completed.returncode


@final
class SchemaUpdateTrigger:
    """Runs ``$SCHEMA_UPDATE`` after a random 0-29 s delay when asked (reference 6.6).

    ``await nursery.start(trigger.run)``; then :meth:`request` from the heartbeat receiver.
    The executable runs with this process's environment plus ``child_env`` (the daemon
    adds ``MICROTRIO_MEMBER`` and ``STATE_DIR``, so that one script can serve several
    members). ``environ``, ``rng`` and ``runner`` are injected for tests; ``max_delay``
    (seconds) may be lowered by tests.
    """

    def __init__(
        self,
        *,
        name: str = "",
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        runner: ProcessRunner | None = None,
        max_delay: int = 29,
        child_env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._environ = environ if environ is not None else os.environ
        self._rng = rng if rng is not None else random.Random()
        self._runner = runner if runner is not None else self._run_default
        self._child_env = dict(child_env or {})
        self.max_delay = max_delay
        self._send, self._receive = trio.open_memory_channel[None](1)
        self.runs = 0

    async def _run_default(self, argv: Sequence[str]) -> int:
        return await _run_process(argv, {**self._environ, **self._child_env})

    def request(self) -> None:
        """Ask for an update run (merged with one already pending)."""
        try:
            self._send.send_nowait(None)
        except trio.WouldBlock:
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for _ in self._receive:
            delay = self._rng.randint(0, self.max_delay)
            command = self._environ.get(SCHEMA_UPDATE_ENV, "")
            if not command:
                logger.info("%s: the cluster schema is ahead of this member; set %s to "
                            "upgrade automatically", self.name, SCHEMA_UPDATE_ENV)
                continue
            logger.info("%s: running %s in %d s", self.name, command, delay)
            await trio.sleep(delay)
            try:
                code = await self._runner([command])
            except OSError as exc:
                logger.warning("%s: %s failed to start: %s", self.name, command, exc)
                continue
            self.runs += 1
            if code != 0:
                logger.warning("%s: %s exited with %d", self.name, command, code)
            while True:  # requests that came in while it ran are served by this run
                try:
                    self._receive.receive_nowait()
                except trio.WouldBlock:
                    break

