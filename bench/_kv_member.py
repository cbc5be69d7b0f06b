"""One member of the benchmark cluster: the example kv service on a replicated database.

``python bench/_kv_member.py PKI_DIR STATE_ROOT NAME ADDR1,ADDR2,ADDR3``

A separate process per member, on the same pieces the daemon uses: the durable Raft store,
the transport (websocket on the member's mutual-TLS listener), the driver, the Raft
committer and the :class:`~microtrio._db.Database` with the kv schema. The kv handlers are
the example application's own (``examples.kv.service``), mounted on a Quart-Trio app next to
the Raft route and served by ``serve_tcp`` (hypercorn, mutual TLS, the cluster certificate).

The daemon cannot form a multi-member cluster yet (``init --token`` is not wired), so this
forms it as ``tests/replication/test_cluster_processes.py`` does: every member is started
with the same founding voters and the fixed addresses of the others. Requests must present
a certificate from ``PKI_DIR`` (a member's or ``client``); anything else gets a 403, as the
daemon's core listener does for untrusted callers.

``--profile FILE`` (used by ``profile_leader.py``) runs the member under cProfile and writes
the statistics to FILE on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import apsw
import trio
from quart import Request, Response, request
from quart_trio import QuartTrio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.kv.service import SCHEMA_UPDATES, kv_delete, kv_get, kv_put  # noqa: E402
from microtrio._api._listener import serve_tcp  # noqa: E402
from microtrio._certs import (  # noqa: E402
    SSLContextHolder,
    client_ssl_context,
    load_cert_key_pair,
    pinned_server_name,
)
from microtrio._db import Database, ExtensionRegistry  # noqa: E402
from microtrio._errors import MicrotrioError  # noqa: E402
from microtrio._replication import (  # noqa: E402
    DriverConfig,
    RaftReplication,
    TransportConfig,
    add_raft_route,
    node_id_for,
)
from microtrio._replication._frames import client_certificates  # noqa: E402

logger = logging.getLogger("microtrio.bench")
NAMES = ("member1", "member2", "member3")


class _KvState:
    """What the kv handlers use of ``microtrio.State``: the database."""

    def __init__(self, database: Database) -> None:
        self.database = database


def _envelope(exc: MicrotrioError) -> Response:
    body = f'{{"type":"error","error":{str(exc)!r:s},"error_code":{exc.status}}}'
    return Response(body, status=exc.status, content_type="application/json")


async def _put_unique(state: _KvState, req: Request, serial: int) -> None:
    """``kv_put`` with the request's serial number appended to the value: the shared load
    client sends one fixed value per run, and a write that changes nothing commits nothing
    in microtrio, while etcd and dqlite replicate every PUT. Same SQL as the example."""
    key = str((req.view_args or {}).get("key", ""))
    body = await req.get_data(as_text=False)
    value = (body if isinstance(body, bytes) else body.encode()) + serial.to_bytes(8, "little")

    def put(conn: apsw.Connection) -> None:
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    await state.database.transaction(put)


def build_app(
    name: str, replication: RaftReplication, trusted: set[bytes], *, unique: bool = False
) -> tuple[Any, Any]:
    app = QuartTrio(name)
    serials = itertools.count(1)
    add_raft_route(app, replication.transport)
    holder: dict[str, _KvState] = {}

    async def kv(key: str) -> Any:
        if not trusted.intersection(client_certificates(request.scope)):
            return Response('{"type":"error","error":"not authorized"}', status=403)
        state = holder["state"]
        try:
            if request.method == "PUT":
                if unique:
                    await _put_unique(state, request, next(serials))
                else:
                    await kv_put(state, request)  # type: ignore[arg-type]
                return Response('{"type":"sync","status":"Success","status_code":200}')
            if request.method == "GET":
                result: Response = await kv_get(state, request)  # type: ignore[arg-type]
                return result
            await kv_delete(state, request)  # type: ignore[arg-type]
            return Response('{"type":"sync","status":"Success","status_code":200}')
        except MicrotrioError as exc:
            return _envelope(exc)

    async def leads() -> Any:
        """200 on the member whose driver leads, 503 elsewhere (bench helpers poll it)."""
        driver = replication.driver
        status = 200 if driver.running and driver.is_leader else 503
        return Response(str(driver.leader_id), status=status)

    async def stats() -> Any:
        """Group commit as the leader sees it: transactions per committed batch."""
        db = holder["state"].database.statistics()
        store = replication.driver.applied_index
        body = {"commits": db.commits, "transactions": db.transactions, "applied": store}
        return Response(json.dumps(body), content_type="application/json")

    app.add_url_rule("/1.0/kv/<key>", "kv", kv, methods=["GET", "PUT", "DELETE"])
    app.add_url_rule("/bench/stats", "stats", stats, methods=["GET"])
    app.add_url_rule("/bench/leader", "leader", leads, methods=["GET"])
    return app, holder


async def keep_leading(replication: RaftReplication, preferred: int) -> None:
    """Hand leadership to ``preferred`` whenever this member leads instead (bench setup:
    puts the leader where the load client's single URL points)."""
    driver = replication.driver
    while True:
        if driver.is_leader and driver.id != preferred:
            try:
                await replication.transfer_leadership(preferred)
            except MicrotrioError as exc:
                logger.warning("leadership transfer to %d failed: %s", preferred, exc)
                await trio.sleep(0.5)
        await driver.wait_changed()


async def main(args: argparse.Namespace) -> None:
    pki, root, name = args.pki, args.root, args.name
    addresses: list[str] = args.addresses.split(",")
    cluster = load_cert_key_pair(pki / "cluster.crt", pki / "cluster.key")
    me = load_cert_key_pair(pki / f"{name}.crt", pki / f"{name}.key")
    trusted = {load_cert_key_pair(pki / f"{n}.crt", pki / f"{n}.key").der for n in NAMES}
    trusted.add(load_cert_key_pair(pki / "client.crt", pki / "client.key").der)
    ids = [node_id_for(n) for n in NAMES]
    address = addresses[NAMES.index(name)]
    state_dir = root / name
    replication = RaftReplication(
        name,
        address,
        directory=state_dir / "database" / "raft",
        ssl_context=client_ssl_context(me, cluster.cert),
        is_trusted=trusted.__contains__,
        bootstrap=ids,
        driver_config=DriverConfig(lease_read=args.lease_read),
        transport_config=TransportConfig(server_hostname=pinned_server_name(cluster.cert)),
    )
    for node_id, peer in zip(ids, addresses, strict=True):
        if peer != address:
            replication.set_address(node_id, peer)
    app, holder = build_app(name, replication, trusted, unique=args.unique_values)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_tcp(
                app, address, SSLContextHolder(cluster), task_status=task_status
            )
        )
        database = Database(
            state_dir / "database" / "db.bin",
            extensions=ExtensionRegistry(),
            schema_updates=SCHEMA_UPDATES,
            committer_factory=replication.committer_factory,
            member=name,
        )
        await nursery.start(database.run)
        await nursery.start(replication.run)
        await database.open(bootstrap=True)
        holder["state"] = _KvState(database)
        if args.prefer_leader is not None:
            nursery.start_soon(keep_leading, replication, node_id_for(args.prefer_leader))
        logger.warning("%s: serving the kv service on https://%s", name, bound)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logger.warning("%s: stopping", name)
                nursery.cancel_scope.cancel()
                break


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pki", type=Path)
    p.add_argument("root", type=Path)
    p.add_argument("name", choices=NAMES)
    p.add_argument("addresses", help="ip:port of member1,member2,member3")
    p.add_argument("--prefer-leader", choices=NAMES, help="hand leadership to this member")
    p.add_argument(
        "--lease-read", action="store_true", help="ReadIndex from the leader's lease (not default)"
    )
    p.add_argument(
        "--unique-values",
        action="store_true",
        help="append a serial number to every PUT's value (every PUT changes the row)",
    )
    p.add_argument("--profile", type=Path, help="write cProfile statistics here on exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    args = _parse()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.profile is None:
        trio.run(main, args)
    else:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            trio.run(main, args)
        finally:
            profiler.disable()
            profiler.dump_stats(str(args.profile))
