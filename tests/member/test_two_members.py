"""Two members sharing a cluster certificate, wired by hand (no join flow): truststore
fan-out with notifications, and ``?target=`` forwarding between members over mutual TLS."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

import microtrio
from microtrio._certs import generate_cert_key_pair

from .conftest import CEILING, Member, call, make_args, start_member
from .test_api import assert_error, assert_sync


def entry(member: Member, name: str) -> dict[str, str]:
    return {
        "name": name,
        "address": member.address,
        "certificate": member.server_pair().cert.decode(),
    }


async def test_truststore_fan_out_and_target_forwarding(tmp_path: Path) -> None:
    removed: list[bool] = []
    configs: list[dict[str, object]] = []

    async def pre_remove(state: microtrio.State, force: bool) -> None:
        removed.append(force)

    async def config_update(state: microtrio.State, config: microtrio.DaemonConfig) -> None:
        configs.append(config.to_dict())

    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            a = await start_member(nursery, tmp_path / "a", make_args())
            b_dir = tmp_path / "b"
            b_dir.mkdir()
            for name in ("cluster.crt", "cluster.key"):
                shutil.copy(a.state_dir / name, b_dir / name)
            b = await start_member(
                nursery,
                b_dir,
                make_args(
                    microtrio.Hooks(pre_remove=pre_remove, on_daemon_config_update=config_update)
                ),
                name="member2",
            )
            assert b.cluster_cert() == a.cluster_cert()
            # Each trusts the other (as a join would arrange).
            assert_sync(
                *await call(a, "POST", "/core/internal/truststore", json_body=entry(b, "member2"))
            )
            assert_sync(
                *await call(b, "POST", "/core/internal/truststore", json_body=entry(a, "member1"))
            )

            # Adding a third entry on A is pushed to B first (as a notification: B does not
            # push it further), then stored on A.
            stranger = generate_cert_key_pair("member3")
            third = {
                "name": "member3",
                "address": "127.0.0.1:9",
                "certificate": stranger.cert.decode(),
            }
            assert_sync(*await call(a, "POST", "/core/internal/truststore", json_body=third))
            assert (a.state_dir / "truststore" / "member3.yaml").exists()
            assert (b.state_dir / "truststore" / "member3.yaml").exists()
            assert_sync(*await call(b, "GET", "/core/1.0/ready", via="tls", pair=stranger))
            assert_sync(*await call(a, "DELETE", "/core/internal/truststore/member3", via="tls"))
            assert not (b.state_dir / "truststore" / "member3.yaml").exists()
            assert_error(*await call(b, "GET", "/core/1.0/ready", via="tls", pair=stranger), 403)

            # ?target= forwards to the member named in core_cluster_members.
            insert = (
                "INSERT INTO core_cluster_members (name, address, certificate, schema_internal,"
                " schema_external, heartbeat, role) VALUES"
                f" ('member2', '{b.address}', 'x', 6, 0, '0001-01-01T00:00:00Z', 'voter')"
            )
            assert_sync(*await call(a, "POST", "/core/internal/sql", json_body={"query": insert}))
            assert_sync(
                *await call(
                    a,
                    "POST",
                    "/core/internal/hooks/pre-remove",
                    json_body={"force": True},
                    params={"target": "member2"},
                )
            )
            assert removed == [True]
            # State.cluster_clients: a client to every other member of the table.
            daemon = a.app.daemon
            assert daemon is not None
            clients = await daemon.state.cluster_clients()
            assert len(clients) == 1
            async with clients[0] as client:
                assert (await client.status())["name"] == "member2"
            # A servers update on A runs on-daemon-config-update on the others.
            assert_sync(*await call(a, "PUT", "/core/1.0/daemon/servers", json_body={}))
            assert configs == [{"name": "member1", "address": a.address, "servers": {}}]
            # A target that is down: the forwarding error comes back as an envelope.
            await b.app.shutdown()
            status, body = await call(
                a,
                "POST",
                "/core/internal/hooks/pre-remove",
                json_body={"force": True},
                params={"target": "member2"},
            )
            assert status == 503 and body["type"] == "error"
            assert removed == [True]
        nursery.cancel_scope.cancel()
