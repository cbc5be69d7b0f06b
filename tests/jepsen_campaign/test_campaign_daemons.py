"""The campaign's cluster under test: real kv daemons, formed with tokens, signalled, faulted.

One three-member cluster (partitions in the Raft transport, so this runs without root too)
checks what the campaign relies on: the members were bootstrapped and joined through the
API, clients reach them over mutual TLS with their own certificates, the trusted-only
campaign endpoints refuse strangers, a delay set through them really slows commits, the
runner's own kill is no crash but an outside one is, a killed member comes back on its
address, and a removed member joins again with a fresh token.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from microtrio._certs import client_ssl_context, generate_cert_key_pair
from microtrio._errors import MicrotrioError
from microtrio.testing._campaign import DaemonExecutor
from microtrio.testing._daemons import DaemonCluster
from microtrio.testing._workloads import CampaignClient

NAMES = ["member1", "member2", "member3"]


def process_state(pid: int) -> str:
    """The one-letter state in /proc (T: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def timed_put(client: CampaignClient, address: str, key: str) -> float:
    """Seconds one acknowledged PUT takes (retried while there is no leader)."""
    while True:
        start = trio.current_time()
        try:
            await client.put(address, key, b"1")
            return trio.current_time() - start
        except MicrotrioError:
            await trio.sleep(0.2)


async def stranger_status(address: str, cluster_crt: bytes) -> int:
    """The HTTP status a client with an unknown certificate gets from the campaign API."""
    context = client_ssl_context(generate_cert_key_pair("stranger"), cluster_crt)
    context.check_hostname = False
    async with httpx.AsyncClient(verify=context, timeout=10) as http:
        resp = await http.post(f"https://{address}/1.0/campaign/faults", json={"links": []})
    return resp.status_code


@pytest.mark.timeout(240)
async def test_daemon_cluster_forms_signals_faults_and_rejoins(tmp_path: Path) -> None:
    with trio.fail_after(220):
        async with trio.open_nursery() as nursery:
            cluster = DaemonCluster(tmp_path, NAMES, nursery=nursery, heartbeat=1.0)
            client = CampaignClient(timeout=10, route=cluster.route)
            cluster.on_change(client.forget)
            ex = DaemonExecutor(cluster, client)
            try:
                await cluster.form()
                listed = await cluster.members_view()
                assert sorted(str(m["name"]) for m in listed) == NAMES
                assert [str(m["role"]) for m in listed].count("voter") == 3
                leader = await ex.leader()
                assert leader in NAMES
                for name in NAMES:  # each member, over mutual TLS, with its own certificate
                    status = await client.status(cluster[name].address)
                    assert status["name"] == name
                crt = (cluster[leader].state_dir / "cluster.crt").read_bytes()
                assert await stranger_status(cluster[leader].address, crt) == 403

                # a delay on every link, set through the campaign endpoint, slows commits
                await ex.degrade(delay=0.05, drop=0.0)
                slow = await timed_put(client, cluster[leader].address, "slow")
                assert slow >= 0.05, slow  # an append and its acknowledgement
                await ex.heal()
                await timed_put(client, cluster[leader].address, "healed")

                # pause and resume: the kernel shows the stop
                follower = next(n for n in NAMES if n != leader)
                m = cluster[follower]
                assert m.pid is not None
                await cluster.pause(follower)
                assert process_state(m.pid) == "T"
                await cluster.resume(follower)
                assert process_state(m.pid) != "T"

                # the runner's kill is no crash; the member restarts on its address
                address, pid = m.address, m.pid
                await cluster.kill(follower)
                assert not m.running and cluster.check_crashes() == []
                await cluster.spawn(follower)
                assert m.pid != pid and m.address == address
                status = await client.status(address)
                assert status["name"] == follower

                # removal (the member resets itself) and a re-join with a fresh token
                await ex.remove(follower)
                await ex.rejoin(follower)
                assert m.address != address
                await cluster.wait_roles()
                await timed_put(client, m.address, "after-rejoin")

                # an outside kill is a crash
                assert m.pid is not None
                os.kill(m.pid, signal.SIGKILL)
                assert m.process is not None
                await m.process.wait()
                assert [c["member"] for c in cluster.check_crashes()] == [follower]
            finally:
                await cluster.aclose()
                await client.aclose()
