"""Application lifecycle hooks and the dispatcher that runs them under a timeout.

``Hooks`` mirrors microcluster's ``state.Hooks``: every field is an optional async callable
receiving the member's :class:`~microtrio.State` first. A missing hook is a no-op. The
:class:`HookRunner` runs one hook at a time, bounded by a timeout, and maps whatever the
application raises to :class:`~microtrio.MicrotrioError` so that callers (the REST API, the
daemon's init flow) see one error type.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import trio

from ._errors import BadRequestError, MicrotrioError, TimeoutError_

if TYPE_CHECKING:
    from ._api._state import ClusterMemberLocal, RoleStatus, State
    from ._state import DaemonConfig

__all__ = ["HookRunner", "HookType", "Hooks", "REMOTE_HOOKS"]

logger = logging.getLogger("microtrio.hooks")


class HookType(enum.StrEnum):
    """Wire names of the hooks (``POST /core/internal/hooks/{type}``)."""

    PRE_INIT = "pre-init"
    PRE_BOOTSTRAP = "pre-bootstrap"
    POST_BOOTSTRAP = "post-bootstrap"
    PRE_JOIN = "pre-join"
    POST_JOIN = "post-join"
    ON_START = "on-start"
    ON_NEW_MEMBER = "on-new-member"
    PRE_REMOVE = "pre-remove"
    POST_REMOVE = "post-remove"
    ON_HEARTBEAT = "on-heartbeat"
    ON_DAEMON_CONFIG_UPDATE = "on-daemon-config-update"


#: The hooks another member may invoke over ``POST /core/internal/hooks/{type}``.
REMOTE_HOOKS: frozenset[HookType] = frozenset(
    {
        HookType.PRE_REMOVE,
        HookType.POST_REMOVE,
        HookType.ON_NEW_MEMBER,
        HookType.ON_DAEMON_CONFIG_UPDATE,
    }
)


@final
@dataclass(frozen=True, slots=True)
class Hooks:
    """The application's lifecycle hooks; every one is optional.

    * ``pre_init(state, bootstrap, init_config)``: before bootstrap or join does any work.
    * ``post_bootstrap(state, init_config)``: after the bootstrapping member's row exists;
      an error rolls the bootstrap back.
    * ``pre_join(state, init_config)`` / ``post_join(state, init_config)``: on a joiner.
    * ``on_start(state)``: on every start of an initialised member, before it reports ready.
    * ``on_new_member(state, new_member)``: on existing members after a join.
    * ``pre_remove(state, force)`` / ``post_remove(state, force)``: around member removal.
    * ``on_heartbeat(state, role_changes)``: on the leader after a heartbeat round.
    * ``on_daemon_config_update(state, config)``: on other members after a servers update.
    """

    pre_init: Callable[[State, bool, Mapping[str, str]], Awaitable[None]] | None = None
    post_bootstrap: Callable[[State, Mapping[str, str]], Awaitable[None]] | None = None
    pre_join: Callable[[State, Mapping[str, str]], Awaitable[None]] | None = None
    post_join: Callable[[State, Mapping[str, str]], Awaitable[None]] | None = None
    on_start: Callable[[State], Awaitable[None]] | None = None
    on_new_member: Callable[[State, ClusterMemberLocal], Awaitable[None]] | None = None
    pre_remove: Callable[[State, bool], Awaitable[None]] | None = None
    post_remove: Callable[[State, bool], Awaitable[None]] | None = None
    on_heartbeat: Callable[[State, Mapping[str, RoleStatus]], Awaitable[None]] | None = None
    on_daemon_config_update: Callable[[State, DaemonConfig], Awaitable[None]] | None = None


_FIELD = {
    HookType.PRE_INIT: "pre_init",
    HookType.POST_BOOTSTRAP: "post_bootstrap",
    HookType.PRE_JOIN: "pre_join",
    HookType.POST_JOIN: "post_join",
    HookType.ON_START: "on_start",
    HookType.ON_NEW_MEMBER: "on_new_member",
    HookType.PRE_REMOVE: "pre_remove",
    HookType.POST_REMOVE: "post_remove",
    HookType.ON_HEARTBEAT: "on_heartbeat",
    HookType.ON_DAEMON_CONFIG_UPDATE: "on_daemon_config_update",
}


@final
class HookRunner:
    """Runs the application's hooks, each bounded by ``timeout`` seconds (None = unbounded)."""

    def __init__(self, hooks: Hooks | None, *, timeout: float | None = 30.0) -> None:
        self.hooks = hooks if hooks is not None else Hooks()
        self.timeout = timeout

    def has(self, hook: HookType) -> bool:
        field = _FIELD.get(hook)
        return field is not None and getattr(self.hooks, field) is not None

    async def run(self, hook: HookType, state: State, *args: Any) -> None:
        """Run ``hook`` with ``state`` and ``args``; a missing hook is a no-op.

        Raises :class:`~microtrio.TimeoutError_` when the hook runs out of time, the hook's own
        :class:`~microtrio.MicrotrioError`, or a :class:`~microtrio.MicrotrioError` wrapping any
        other exception the hook raised.
        """
        field = _FIELD.get(hook)
        if field is None:
            raise BadRequestError(f"Unknown hook type {str(hook)!r}")
        fn: Callable[..., Awaitable[None]] | None = getattr(self.hooks, field)
        if fn is None:
            return
        logger.debug("%s: running hook %s", state.name, hook)
        timeout = self.timeout if self.timeout is not None else float("inf")
        try:
            with trio.fail_after(timeout):
                await fn(state, *args)
        except trio.TooSlowError as exc:
            raise TimeoutError_(f"Hook {hook} timed out after {timeout:g}s") from exc
        except MicrotrioError:
            raise
        except Exception as exc:  # the application's code: map it at this seam
            raise MicrotrioError(f"Hook {hook} failed: {exc}") from exc
