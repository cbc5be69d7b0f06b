"""One replicated member as a real process, driven over stdin/stdout with JSON lines.

``python _raft_process.py ROOT NAME NAME1,NAME2,...``: loads the PKI from ROOT/pki, binds
127.0.0.1 port 0, prints ``{"address": ...}``, reads one line ``{"peers": {id: address}}``,
starts the database and replication, prints ``{"ready": true}``, then answers commands:
``status``, ``exec`` (one SQL write), ``read`` (SQL query, linearizable), ``peer`` (a new
address of a member).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from _raft_cluster import Member, Pki, write

from microtrio._certs import load_cert_key_pair
from microtrio._errors import MicrotrioError
from microtrio._replication import node_id_for


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> dict[str, Any]:
    line = await trio.to_thread.run_sync(sys.stdin.readline)
    if not line:
        raise SystemExit(0)
    result: dict[str, Any] = json.loads(line)
    return result


async def handle(member: Member, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "status":
        driver = member.repl.driver
        return {"id": member.id, "leader": driver.leader_id, "applied": driver.applied_index}
    if op == "peer":
        member.repl.set_address(int(command["id"]), command["address"])
        return {}
    try:
        if op == "exec":
            sql = command["sql"]
            await write(member, lambda conn: conn.execute(sql, command.get("args", [])).fetchall())
            return {"ok": True}
        if op == "read":
            sql = command["sql"]
            rows = await member.db.read(lambda conn: conn.execute(sql).fetchall())
            return {"rows": [list(r) for r in rows]}
    except MicrotrioError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": "unknown op"}


async def main(root: Path, name: str, names: list[str]) -> None:
    pki_dir = root / "pki"
    pki = Pki(
        cluster=load_cert_key_pair(pki_dir / "cluster.crt", pki_dir / "cluster.key"),
        members={n: load_cert_key_pair(pki_dir / f"{n}.crt", pki_dir / f"{n}.key") for n in names},
    )
    member = Member(name, root, pki)
    async with trio.open_nursery() as nursery:
        await member.listen(nursery, [node_id_for(n) for n in names])
        emit({"address": member.address})
        peers = (await read_line())["peers"]
        await member.start_database({int(k): v for k, v in peers.items()})
        await member.open_database()
        emit({"ready": True})
        while True:
            emit(await handle(member, await read_line()))


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","))
