"""Replacing the cluster certificate of a running three-member cluster (real TLS, Raft).

The rotation (``_cluster/_rotation.py``) goes through stage / switch / finish on every
member. Afterwards: every listener that uses the cluster certificate presents the new one
(the dedicated one keeps its own), writes replicate, heartbeats keep everyone ONLINE,
``?target=`` forwarding works, a new token carries the new fingerprint and a new member
joins with it, a client pinning the old certificate is refused, and every member comes back
after a restart. Bad input is refused with nothing changed on any member. An additional
listener's certificate replaced on one member is live on all of them (and a later rotation
leaves it alone). Also
``PUT /core/1.0/daemon/servers``: the listener moves, the other members run
``OnDaemonConfigUpdate``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import Request

import microtrio
from microtrio._certs import fetch_remote_certificate, fingerprint, generate_cert_key_pair
from microtrio._cluster._tokens import decode_token

from ._flows import form_cluster, members, wait_roles
from .conftest import CEILING, Node, Recorder, make_args, run_node, start_node, wait_until

ONLINE_VOTER = ("voter", "ONLINE")


async def _whoami(state: microtrio.State, req: Request) -> Any:
    return {"name": state.name}


SERVERS = {
    # On the core listener; ?target= forwards it to the named member.
    "app": microtrio.Server(
        core_api=True,
        serve_unix=True,
        resources=[
            microtrio.Resources(
                "1.0",
                [
                    microtrio.Endpoint(
                        "whoami", get=microtrio.EndpointAction(_whoami, proxy_target=True)
                    )
                ],
            )
        ],
    ),
    # Its own listener with the cluster certificate (no dedicated one).
    "extra": microtrio.Server(
        address="127.0.0.1:0",
        resources=[
            microtrio.Resources(
                "extra", [microtrio.Endpoint("ping", get=microtrio.EndpointAction(_whoami))]
            )
        ],
    ),
    # Its own listener; the cluster certificate until one is given to it.
    "custom": microtrio.Server(
        address="127.0.0.3:0",
        resources=[
            microtrio.Resources(
                "custom", [microtrio.Endpoint("ping", get=microtrio.EndpointAction(_whoami))]
            )
        ],
    ),
    # Its own listener with its own certificate.
    "own": microtrio.Server(
        address="127.0.0.2:0",  # port 0 on one address is "in use" for a second server
        dedicated_certificate=True,
        resources=[
            microtrio.Resources(
                "own", [microtrio.Endpoint("ping", get=microtrio.EndpointAction(_whoami))]
            )
        ],
    ),
}


def _listeners(node: Node) -> dict[str, str]:
    daemon = node.app.daemon
    assert daemon is not None
    return daemon.listener_addresses


async def _presented(address: str) -> str:
    return fingerprint(await fetch_remote_certificate(address))


def _pin_files(node: Node) -> list[str]:
    return sorted(p.name for p in node.state_dir.glob("cluster.*.crt"))


async def _put_cert(node: Node, name: str, body: Any) -> int:
    """The HTTP status of ``PUT /core/1.0/cluster/certificates/<name>``."""
    async with node.app.local_client() as client:
        try:
            await client.query("PUT", f"/core/1.0/cluster/certificates/{name}", body)
        except microtrio.RemoteError as exc:
            return exc.status
    return 200


async def _heartbeats_after(node: Node, moment: datetime.datetime) -> bool:
    rows = await node.app.cluster_members()
    return all(
        datetime.datetime.fromisoformat(row["last_heartbeat"]) > moment
        and row["status"] == "ONLINE"
        for row in rows
    )


async def test_cluster_certificate_rotation(tmp_path: Path) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING * 2):
            nodes = await form_cluster(nursery, tmp_path, 3, recorder, servers=SERVERS)
            m1, m2, m3 = nodes
            await wait_roles(m1.app, [ONLINE_VOTER] * 3)
            await m1.app.sql("CREATE TABLE t (v INTEGER)")
            old = (m1.state_dir / "cluster.crt").read_bytes()
            old_fp = fingerprint(old)
            own_fp = {n.name: await _presented(_listeners(n)["own"]) for n in nodes}
            assert all(fp != old_fp for fp in own_fp.values())

            # Bad input: refused (400), and nothing changes on any member.
            new = generate_cert_key_pair("rotated.example")
            other = generate_cert_key_pair("other.example")
            bad: list[tuple[str, Any]] = [
                ("cluster", {"cert": "not a certificate", "key": new.key.decode()}),
                ("cluster", {"cert": new.cert.decode(), "key": other.key.decode()}),
                ("cluster", {"cert": new.cert.decode()}),
                ("a..b", {"cert": new.cert.decode(), "key": new.key.decode()}),
            ]
            for name, body in bad:
                assert await _put_cert(m2, name, body) == 400, name
            for node in nodes:
                assert (node.state_dir / "cluster.crt").read_bytes() == old
                assert _pin_files(node) == []
                assert await _presented(_listeners(node)["core"]) == old_fp

            # An additional listener's certificate, asked on member1: live on every member.
            custom = generate_cert_key_pair("custom.example")
            body = {"cert": custom.cert.decode(), "key": custom.key.decode()}
            assert await _put_cert(m1, "custom", body) == 200
            for node in nodes:
                assert await _presented(_listeners(node)["custom"]) == custom.fingerprint
                assert (node.state_dir / "certificates" / "custom.crt").read_bytes() == custom.cert
            assert await _put_cert(m1, "nosuch", body) == 404

            # The rotation, asked on member2 over its control socket.
            moment = datetime.datetime.now(datetime.UTC)
            body = {"cert": new.cert.decode(), "key": new.key.decode()}
            assert await _put_cert(m2, "cluster", body) == 200
            for node in nodes:
                assert (node.state_dir / "cluster.crt").read_bytes() == new.cert
                assert (node.state_dir / "cluster.key").read_bytes() == new.key
                assert _pin_files(node) == []  # the old certificate is no longer pinned
                listeners = _listeners(node)
                assert await _presented(listeners["core"]) == new.fingerprint
                assert await _presented(listeners["extra"]) == new.fingerprint
                assert await _presented(listeners["own"]) == own_fp[node.name]
                assert await _presented(listeners["custom"]) == custom.fingerprint

            # Writes replicate through Raft; heartbeats keep every member ONLINE.
            for i, node in enumerate(nodes):
                await node.app.sql(f"INSERT INTO t VALUES ({i})")
            await wait_until(lambda: _heartbeats_after(m1, moment))
            for node in nodes:
                result: Any = await node.app.sql("SELECT count(*) FROM t")
                assert result["Results"][0]["rows"] == [[3]]
            # ?target= forwarding (member1 -> member3 over mutual TLS, new certificate pinned).
            async with m1.app.local_client() as client:
                answer = await client.query("GET", "/1.0/whoami", params={"target": "member3"})
            assert answer == {"name": "member3"}

            # A client that pins the old certificate is refused; the new one is accepted.
            core3 = _listeners(m3)["core"]
            async with await m1.app.remote_client(core3, pinned=old) as client:
                with pytest.raises(microtrio.UnavailableError, match="pinned"):
                    await client.status()
            async with await m1.app.remote_client(core3) as client:
                assert (await client.status())["name"] == "member3"

            # A new token carries the new fingerprint, and a new member joins with it.
            token = await m3.app.new_join_token("member4")
            assert decode_token(token).fingerprint == new.fingerprint
            m4 = await start_node(nursery, tmp_path, "member4", make_args(recorder,
                                                                          servers=SERVERS))
            await m4.app.join_cluster("member4", "127.0.0.1:0", token)
            assert (m4.state_dir / "cluster.crt").read_bytes() == new.cert
            nodes.append(m4)
            await m4.app.sql("INSERT INTO t VALUES (4)")
            await wait_until(lambda: _all_online(m1, 4))

            # PUT /core/1.0/daemon/servers on member1: its extra listener moves to another
            # address, the one with its own certificate stops; the other members (not member1) run OnDaemonConfigUpdate.
            before = _listeners(m1)["extra"]
            async with m1.app.local_client() as client:
                await client.query(
                    "PUT", "/core/1.0/daemon/servers",
                    {"extra": {"address": "127.0.0.2:0"}, "own": {"address": ""},
                     "custom": {"address": "127.0.0.3:0"}},
                )
            assert "own" not in _listeners(m1)
            after = _listeners(m1)["extra"]
            assert before.startswith("127.0.0.1:") and after.startswith("127.0.0.2:")
            assert await _presented(after) == new.fingerprint
            updates = [(n, a) for n, h, a in recorder.calls if h == "on-daemon-config-update"]
            assert sorted(n for n, _ in updates) == ["member2", "member3", "member4"]
            assert all(a[0]["name"] == "member1" for _, a in updates)
            assert all(a[0]["servers"]["own"] == {"address": ""} for _, a in updates)
            assert all(a[0]["servers"]["extra"] == {"address": "127.0.0.2:0"} for _, a in updates)

            # Every member stopped and started again: all come back with the new certificate.
            for node in nodes:
                await node.app.shutdown()
                await node.done.wait()
            again = [
                Node(n.name, n.state_dir,
                     microtrio.App(n.state_dir, args=make_args(servers=SERVERS)),
                     trio.CancelScope())
                for n in nodes
            ]
            for node in again:
                nursery.start_soon(run_node, node)
            await wait_until(lambda: _all_online(again[0], 4))
            for node in again:
                assert await _presented(_listeners(node)["core"]) == new.fingerprint
                result = await node.app.sql("SELECT count(*) FROM t")
                assert result["Results"][0]["rows"] == [[4]]
        nursery.cancel_scope.cancel()


async def _all_online(node: Node, count: int) -> bool:
    try:
        found = await members(node.app)
    except (microtrio.MicrotrioError, OSError):
        return False
    return len(found) == count and all(s == "ONLINE" for _, s in found.values())


async def test_member_down_during_rotation_follows_on_start(tmp_path: Path) -> None:
    """member3 is stopped while the cluster certificate is rotated; when it starts again
    it finds the others present a certificate it does not pin, checks that its own (old)
    cluster key vouched for it, adopts it and rejoins, without an operator."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING * 2):
            nodes = await form_cluster(nursery, tmp_path, 3)
            m1, m2, m3 = nodes
            await wait_roles(m1.app, [ONLINE_VOTER] * 3)
            await m1.app.sql("CREATE TABLE t (v INTEGER)")
            old = (m3.state_dir / "cluster.crt").read_bytes()
            await m3.app.shutdown()
            await m3.done.wait()

            new = generate_cert_key_pair("rotated.example")
            body = {"cert": new.cert.decode(), "key": new.key.decode()}
            assert await _put_cert(m1, "cluster", body) == 200
            assert (m2.state_dir / "cluster.crt").read_bytes() == new.cert
            assert (m3.state_dir / "cluster.crt").read_bytes() == old  # it was down
            await m1.app.sql("INSERT INTO t VALUES (1)")

            again = Node(m3.name, m3.state_dir,
                         microtrio.App(m3.state_dir, args=make_args()), trio.CancelScope())
            nursery.start_soon(run_node, again)
            await wait_until(lambda: _all_online(m1, 3))
            assert (m3.state_dir / "cluster.crt").read_bytes() == new.cert
            assert (m3.state_dir / "cluster.key").read_bytes() == new.key
            assert _pin_files(again) == []
            assert await _presented(_listeners(again)["core"]) == new.fingerprint
            await again.app.sql("INSERT INTO t VALUES (3)")
            result: Any = await m2.app.sql("SELECT v FROM t ORDER BY v")
            assert result["Results"][0]["rows"] == [[1], [3]]
        nursery.cancel_scope.cancel()


async def test_running_member_cut_off_during_rotation_follows(tmp_path: Path) -> None:
    """member3 keeps running but cannot be reached while the certificate is rotated (its
    core listener is down); once back it presents the old certificate and nobody can talk
    to it. Having no Raft leader, it follows the rotation by itself."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING * 2):
            nodes = await form_cluster(nursery, tmp_path, 3)
            m1, m2, m3 = nodes
            await wait_roles(m1.app, [ONLINE_VOTER] * 3)
            await m1.app.sql("CREATE TABLE t (v INTEGER)")
            daemon3 = m3.app.daemon
            assert daemon3 is not None
            address3 = daemon3.state.address
            old = (m3.state_dir / "cluster.crt").read_bytes()
            await daemon3.stop_listener("core")

            new = generate_cert_key_pair("rotated.example")
            body = {"cert": new.cert.decode(), "key": new.key.decode()}
            assert await _put_cert(m1, "cluster", body) == 200
            assert (m3.state_dir / "cluster.crt").read_bytes() == old
            await daemon3.start_core_listener(address3)  # back, with the old certificate
            assert await _presented(address3) == fingerprint(old)

            async def followed() -> bool:
                return (m3.state_dir / "cluster.crt").read_bytes() == new.cert

            await wait_until(followed)
            await wait_until(lambda: _all_online(m1, 3))
            assert await _presented(address3) == new.fingerprint
            await m3.app.sql("INSERT INTO t VALUES (3)")
            result: Any = await m2.app.sql("SELECT v FROM t")
            assert result["Results"][0]["rows"] == [[3]]
        nursery.cancel_scope.cancel()
