"""An implementation of every lifecycle hook that logs it (logger ``microd.hooks``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import microtrio

__all__ = ["HOOKS"]

logger = logging.getLogger("microd.hooks")


async def pre_init(state: microtrio.State, bootstrap: bool, config: Mapping[str, str]) -> None:
    logger.info("%s: PreInit (bootstrap=%s, config=%s)", state.name, bootstrap, dict(config))


async def post_bootstrap(state: microtrio.State, config: Mapping[str, str]) -> None:
    logger.info("%s: PostBootstrap (config=%s)", state.name, dict(config))


async def pre_join(state: microtrio.State, config: Mapping[str, str]) -> None:
    logger.info("%s: PreJoin (config=%s)", state.name, dict(config))


async def post_join(state: microtrio.State, config: Mapping[str, str]) -> None:
    logger.info("%s: PostJoin (config=%s)", state.name, dict(config))


async def on_start(state: microtrio.State) -> None:
    logger.info("%s: OnStart", state.name)


async def on_new_member(state: microtrio.State, member: microtrio.ClusterMemberLocal) -> None:
    logger.info("%s: OnNewMember %s at %s", state.name, member.name, member.address)


async def pre_remove(state: microtrio.State, force: bool) -> None:
    logger.info("%s: PreRemove (force=%s)", state.name, force)


async def post_remove(state: microtrio.State, force: bool) -> None:
    logger.info("%s: PostRemove (force=%s)", state.name, force)


async def on_heartbeat(state: microtrio.State, roles: Mapping[str, microtrio.RoleStatus]) -> None:
    changes = {name: f"{r.old}->{r.new}" for name, r in roles.items() if r.old != r.new}
    logger.info("%s: OnHeartbeat (role changes: %s)", state.name, changes or "none")


async def on_daemon_config_update(state: microtrio.State, config: microtrio.DaemonConfig) -> None:
    logger.info("%s: OnDaemonConfigUpdate from %s", state.name, config.name)


HOOKS = microtrio.Hooks(
    pre_init=pre_init,
    post_bootstrap=post_bootstrap,
    pre_join=pre_join,
    post_join=post_join,
    on_start=on_start,
    on_new_member=on_new_member,
    pre_remove=pre_remove,
    post_remove=post_remove,
    on_heartbeat=on_heartbeat,
    on_daemon_config_update=on_daemon_config_update,
)
