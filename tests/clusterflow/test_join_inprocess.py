"""Joining through the real daemon, in one trio.run: three members bootstrapped and joined
with tokens over the REST API, roles converging by heartbeats, replicated writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import microtrio
from microtrio._client import Client
from microtrio._errors import RemoteError

from .conftest import CEILING, Recorder, make_args, start_node, wait_until


async def roles(app: microtrio.App) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["role"], m["status"]) for m in await app.cluster_members()}


async def test_three_members_join_and_converge(tmp_path: Path) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            nodes = [
                await start_node(nursery, tmp_path, f"member{i}", make_args(recorder))
                for i in (1, 2, 3)
            ]
            m1, m2, m3 = nodes
            await m1.app.new_cluster("member1", "127.0.0.1:0", {"k": "v"})
            for node in (m2, m3):
                token = await m1.app.new_join_token(node.name)
                await node.app.join_cluster(node.name, "127.0.0.1:0", token, {"j": "1"})
            # A token is single-use: it is gone once admitted.
            assert await m1.app.list_join_tokens() == []

            async def converged() -> bool:
                found = await roles(m1.app)
                return sorted(found.values()) == [("voter", "ONLINE")] * 3

            await wait_until(converged)
            # Writes through any member are replicated everywhere.
            await m2.app.sql("CREATE TABLE t (v TEXT)")
            await m3.app.sql("INSERT INTO t VALUES ('from-3')")
            for node in nodes:
                result: Any = await node.app.sql("SELECT v FROM t")
                assert result["Results"][0]["rows"] == [["from-3"]]
            # Every member trusts every other one.
            for node in nodes:
                names = sorted(p.stem for p in (node.state_dir / "truststore").glob("*.yaml"))
                assert names == ["member1", "member2", "member3"]

            # A used token cannot be used twice, and a wrong name is refused.
            token = await m1.app.new_join_token("member4")
            m4 = await start_node(nursery, tmp_path, "member4", make_args())
            with pytest.raises(microtrio.MicrotrioError):
                await m4.app.join_cluster("member5", "127.0.0.1:0", token)
            assert (await m4.app.status())["ready"] is False

            # Failed admissions (here: bad extensions; one failed join above) are limited
            # per address: then 429, whatever the request.
            bogus = {"name": "member7", "address": "127.0.0.1:7", "certificate": "x",
                     "secret": "0" * 64, "extensions": None}
            address = (await m2.app.status())["address"]
            pinned = (m1.state_dir / "cluster.crt").read_bytes()
            codes = []
            async with Client.tls(address, cert=None, pinned=pinned) as client:
                for _ in range(7):
                    try:
                        await client.query("POST", "/core/internal/cluster", bogus)
                    except RemoteError as exc:
                        codes.append(exc.status)
            assert len(codes) == 7 and codes[0] == 400 and codes[-2:] == [429, 429], codes
        nursery.cancel_scope.cancel()
