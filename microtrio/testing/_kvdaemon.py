"""The daemon under test of the fault-injection campaign: the kv example as a real daemon.

``python -m microtrio.testing._kvdaemon --state DIR [--heartbeat S] [--plugin FILE]`` runs
one :class:`microtrio.App` with the kv example's ``DaemonArgs`` (``examples.kv``: the
``/1.0/kv/{key}`` routes) and starts *uninitialised*, exactly like
``python -m examples.kv daemon``: the runner bootstraps the first member and joins the others
with join tokens over each member's control socket, as an operator would. Compared with the
example it adds, for the campaign only:

* the workloads' tables (``bank``, ``append``) as two more schema updates;
* a trusted-only ``campaign`` server on the core API (and the control socket), the
  runner's way into the member's Raft layer, which no normal daemon has:

  - ``GET /1.0/campaign/status``: this member's Raft id, the leader it believes in, whether
    it leads, its applied index;
  - ``POST /1.0/campaign/faults``: ``{"links": [[src, dst, drop, delay, blocked], ...]}``
    replaces every rule of this process's :class:`~microtrio._replication.Faults` (member
    names; ``[]`` clears). Rules act where they are set: the runner sets ``src -> dst`` only
    in ``src``'s process, so each message meets each rule once;
  - ``POST /1.0/campaign/transfer``: ``{"to": name}`` asks this member (the leader) to hand
    leadership over.

The :class:`Faults` object is the daemon's ``DaemonArgs.faults`` (it outlives a reset: a
removed member that joins again builds a new transport on the same object).

``--plugin FILE`` replaces the kv ``PUT``/``GET`` handlers by a file's ``kv_put(ctx, key,
value)`` / ``kv_get(ctx, key, stale)`` (``ctx.database``, ``ctx.nursery``): the test suite's
deliberately broken variants live in tests/jepsen_campaign/, nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

__all__ = ["CAMPAIGN_SCHEMA", "build_args"]

logger = logging.getLogger("microtrio.testing.kvdaemon")

CAMPAIGN_SCHEMA: Final = (
    "CREATE TABLE bank (account TEXT PRIMARY KEY NOT NULL, balance INTEGER NOT NULL)",
    "CREATE TABLE append (k TEXT NOT NULL, v INTEGER NOT NULL)",
)


class _PluginContext:
    def __init__(self, state: Any, nursery: trio.Nursery) -> None:
        self.database = state.database
        self.nursery = nursery


def _replication(state: Any) -> Any:
    """The member's :class:`~microtrio._replication.RaftReplication` (None while it has no
    open database)."""
    cluster = getattr(state.control, "cluster", None)
    return getattr(cluster, "replication", None)


def _campaign_server(faults: Any) -> Any:
    import microtrio

    from .._replication import node_id_for

    async def status(state: Any, req: Any) -> Any:
        replication = _replication(state)
        if replication is None:
            return {"name": state.name, "id": node_id_for(state.name), "leader": 0,
                    "is_leader": False, "applied": 0}  # fmt: skip
        driver = replication.driver
        return {"name": state.name, "id": driver.id, "leader": int(driver.leader_id or 0),
                "is_leader": bool(driver.is_leader), "applied": int(driver.applied_index)}  # fmt: skip

    async def set_faults(state: Any, req: Any) -> Any:
        body = await req.get_json(force=True, silent=True)
        links = body.get("links") if isinstance(body, dict) else None
        if not isinstance(links, list):
            raise microtrio.BadRequestError(
                'expected {"links": [[src, dst, drop, delay, blocked]]}'
            )
        rules = []
        for link in links:
            if not isinstance(link, list) or len(link) != 5:
                raise microtrio.BadRequestError(f"bad link rule {link!r}")
            src, dst, drop, delay, blocked = link
            rules.append((node_id_for(str(src)), node_id_for(str(dst)), float(drop),
                          float(delay), bool(blocked)))  # fmt: skip
        faults.clear()
        for src_id, dst_id, drop, delay, blocked in rules:
            faults.set_link(src_id, dst_id, drop=drop, delay=delay, blocked=blocked)
        logger.warning("%s: fault rules now %s", state.name, rules)
        return {"rules": len(rules)}

    async def transfer(state: Any, req: Any) -> Any:
        body = await req.get_json(force=True, silent=True)
        to = body.get("to") if isinstance(body, dict) else None
        if not isinstance(to, str):
            raise microtrio.BadRequestError('expected {"to": name}')
        replication = _replication(state)
        if replication is None:
            raise microtrio.UnavailableError("no replication here")
        await replication.transfer_leadership(node_id_for(to))
        return {}

    return microtrio.Server(
        resources=[
            microtrio.Resources(
                "1.0",
                [
                    microtrio.Endpoint(
                        "campaign/status", name="campaign-status",
                        get=microtrio.EndpointAction(status),
                        allowed_before_init=True, allowed_during_shutdown=True,
                    ),
                    microtrio.Endpoint(
                        "campaign/faults", name="campaign-faults",
                        post=microtrio.EndpointAction(set_faults),
                        allowed_before_init=True, allowed_during_shutdown=True,
                    ),
                    microtrio.Endpoint(
                        "campaign/transfer", name="campaign-transfer",
                        post=microtrio.EndpointAction(transfer),
                    ),
                ],
            )
        ],
        core_api=True,
        serve_unix=True,
    )  # fmt: skip


def _load_plugin(path: Path) -> Any:
    from .._errors import ValidationError

    spec = importlib.util.spec_from_file_location("microtrio_campaign_plugin", path)
    if spec is None or spec.loader is None:
        raise ValidationError(f"cannot load plugin {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kv_server(plugin: Path | None, nursery: Callable[[], trio.Nursery]) -> Any:
    """The example's kv server; with a plugin, its PUT/GET handlers replaced."""
    from examples.kv import service

    server = service.KV_SERVER
    if plugin is None:
        return server
    import microtrio

    module = _load_plugin(plugin)
    put_fn = getattr(module, "kv_put", None)
    get_fn = getattr(module, "kv_get", None)

    async def put(state: Any, req: Any) -> Any:
        if put_fn is None:
            return await service.kv_put(state, req)
        key = service._key(req)
        await put_fn(_PluginContext(state, nursery()), key, await req.get_data(as_text=False))
        return {}

    async def get(state: Any, req: Any) -> Any:
        if get_fn is None:
            return await service.kv_get(state, req)
        from quart import Response

        key = service._key(req)
        stale = req.args.get("stale", "").lower() in ("1", "true", "yes")
        value = await get_fn(_PluginContext(state, nursery()), key, stale)
        if value is None:
            raise microtrio.NotFoundError(f"No key {key!r}")
        return Response(value, status=200, content_type="application/octet-stream")

    (resources,) = server.resources
    (endpoint,) = resources.endpoints
    endpoint = dataclasses.replace(
        endpoint,
        get=microtrio.EndpointAction(get),
        put=microtrio.EndpointAction(put),
    )
    return dataclasses.replace(
        server, resources=[dataclasses.replace(resources, endpoints=[endpoint])]
    )


def build_args(
    *, heartbeat: float, faults: Any, plugin: Path | None, nursery: Callable[[], trio.Nursery]
) -> Any:
    """The kv example's ``DaemonArgs`` plus the campaign's schema and server."""
    import microtrio
    from examples.kv import service

    base = service.daemon_args(heartbeat_interval=heartbeat)
    schema = (*base.schema_updates,
              *(microtrio.SchemaUpdate(s, name=f"campaign-{i}") for i, s in enumerate(CAMPAIGN_SCHEMA)))  # fmt: skip
    servers = dict(base.servers)
    servers["kv"] = _kv_server(plugin, nursery)
    servers["campaign"] = _campaign_server(faults)
    return dataclasses.replace(base, schema_updates=schema, servers=servers, faults=faults)


async def main(ns: argparse.Namespace) -> None:
    import random

    import microtrio

    from .._replication import Faults

    faults = Faults(random.Random(ns.seed))
    holder: list[trio.Nursery] = []
    args = build_args(
        heartbeat=ns.heartbeat, faults=faults, plugin=Path(ns.plugin) if ns.plugin else None,
        nursery=lambda: holder[0],
    )  # fmt: skip
    app = microtrio.App(ns.state, args=args)
    async with trio.open_nursery() as nursery:
        holder.append(nursery)
        # a process of its own, as a production daemon: its heap is frozen (docs/operations.md)
        await nursery.start(partial(app.run, freeze_heap=True))
        logger.warning("daemon ready (state %s)", ns.state)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logger.warning("stopping")
                daemon = app.daemon
                if daemon is not None:
                    with trio.move_on_after(15):
                        await daemon.shutdown()
                nursery.cancel_scope.cancel()
                break


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the kv example as a daemon under test")
    p.add_argument("--state", required=True)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the loss decisions")
    p.add_argument("--plugin", help="a Python file with replacement kv_put / kv_get")
    return p.parse_args(argv)


if __name__ == "__main__":
    _ns = _parse(sys.argv[1:])
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {Path(_ns.state).name} %(name)s %(levelname)s %(message)s",
    )
    trio.run(main, _ns)
