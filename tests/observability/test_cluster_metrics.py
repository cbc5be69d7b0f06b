"""Raft and heartbeat metrics on every member of a 3-member cluster (``GET /core/1.0/metrics``
over mutual TLS). Member names on log records: test_member_logs.py."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
from _cluster_support import KILLED_MEMBER_LEFTOVERS, write_retrying

from microtrio._metrics import CONTENT_TYPE
from microtrio.testing import TestCluster, open_cluster

CEILING = 120

#: Stopping the cluster cancels heartbeat requests in flight (every 0.2 s here).
pytestmark = KILLED_MEMBER_LEFTOVERS
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]

RAFT = (
    "microtrio_raft_term",
    "microtrio_raft_role",
    "microtrio_raft_leader",
    "microtrio_raft_commit_index",
    "microtrio_raft_applied_index",
    "microtrio_raft_log_entries",
    "microtrio_raft_log_bytes",
    "microtrio_raft_peer_lag_entries",
    "microtrio_heartbeat_age_seconds",
)


def parse(text: str) -> Samples:
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        out.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if lab == labels]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


async def scrape(cluster: TestCluster) -> dict[str, Samples]:
    out: dict[str, Samples] = {}
    for member in cluster.members:
        async with await member.client() as client:  # mutual TLS, a trusted certificate
            response = await client._http.get("/core/1.0/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CONTENT_TYPE
        assert "# TYPE microtrio_raft_term gauge" in response.text
        out[member.name] = parse(response.text)
    return out


def settled(views: Mapping[str, Samples]) -> bool:
    """Every member publishes every family, agrees on the term and sees every member's
    heartbeat (a leader change or a first heartbeat round may still be under way)."""
    if any(name not in v for v in views.values() for name in RAFT if name != RAFT[7]):
        return False
    terms = {one(v, "microtrio_raft_term") for v in views.values()}
    leaders = sum(one(v, "microtrio_raft_leader") for v in views.values())
    ages = all(len(v["microtrio_heartbeat_age_seconds"]) == len(views) for v in views.values())
    return len(terms) == 1 and leaders == 1 and ages


async def test_raft_and_heartbeat_metrics_on_every_member(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with open_cluster(3, tmp_path=tmp_path, heartbeat_interval=0.2) as cluster:
            views = await scrape(cluster)
            while not settled(views):  # polling for convergence, not for ordering
                await trio.sleep(0.05)
                views = await scrape(cluster)
            leader_ids = {str(m.leader_id()) for m in cluster.members}

    names = sorted(views)
    leaders = [n for n in names if one(views[n], "microtrio_raft_leader") == 1]
    assert len(leaders) == 1
    (leader,) = leaders
    term = one(views[leader], "microtrio_raft_term")
    assert term >= 1
    for name, v in views.items():
        assert one(v, "microtrio_raft_term") == term
        role = "leader" if name == leader else "follower"
        assert one(v, "microtrio_raft_role", role=role) == 1
        assert sum(value for _, value in v["microtrio_raft_role"]) == 1
        assert len(v["microtrio_raft_role"]) == 4  # every role is listed, one-hot
        commit = one(v, "microtrio_raft_commit_index")
        applied = one(v, "microtrio_raft_applied_index")
        assert 1 <= applied <= commit
        assert one(v, "microtrio_raft_log_entries") >= 1
        assert one(v, "microtrio_raft_log_bytes") > 0
        ages = {lab["member"]: age for lab, age in v["microtrio_heartbeat_age_seconds"]}
        assert sorted(ages) == names
        assert all(0 <= age < 60 for age in ages.values()), ages
        if name != leader:
            assert (
                "microtrio_raft_peer_lag_entries" not in v
                or not v["microtrio_raft_peer_lag_entries"]
            )
    # the leader's view of each peer: its Raft node id, lag between 0 and its whole log
    lags = views[leader]["microtrio_raft_peer_lag_entries"]
    assert len(lags) == 2, lags
    assert len(leader_ids) == 1  # everyone agrees on the leader's Raft id; no lag for it
    assert leader_ids.isdisjoint(lab["peer"] for lab, _ in lags)
    assert len({lab["peer"] for lab, _ in lags}) == 2
    last = one(views[leader], "microtrio_raft_commit_index") + 1000
    assert all(0 <= lag <= last for _, lag in lags)


#: What issue #7 asks the metrics endpoint to show on each member (the histograms by their
#: ``_count`` series; the per-peer lag on the leader only).
CURL_FAMILIES = (
    "microtrio_raft_term",
    "microtrio_raft_role",
    "microtrio_raft_commit_index",
    "microtrio_raft_applied_index",
    "microtrio_raft_log_entries",
    "microtrio_raft_log_bytes",
    "microtrio_heartbeat_age_seconds",
    "microtrio_db_commit_seconds_count",  # writes: replicate and apply a batch
    "microtrio_db_read_barrier_seconds_count",  # linearizable reads
    "microtrio_api_request_duration_seconds_count",  # as clients see them, per endpoint
)


async def curl(*args: str) -> str:
    done = await trio.run_process(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "30", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return str(done.stdout.decode())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_shows_the_metrics_on_every_member(tmp_path: Path) -> None:
    """The commands of docs/concepts/observability.md, with the real ``curl``: over each
    member's control socket and over mutual TLS to its address (its own trusted certificate,
    the cluster certificate as the CA), after writes and linearizable reads on each."""
    with trio.fail_after(CEILING):
        async with open_cluster(3, tmp_path=tmp_path, heartbeat_interval=0.2) as cluster:
            await write_retrying(cluster[0], "CREATE TABLE t (k INTEGER PRIMARY KEY)")
            for k, member in enumerate(cluster.members):
                await write_retrying(member, f"INSERT INTO t VALUES ({k})")
                async with member.local_client() as client:
                    await client.sql_query("SELECT count(*) FROM t")  # a linearizable read
            leader = await cluster.wait_for_leader()
            while True:  # every member has seen every member's heartbeat
                views = {}
                for member in cluster.members:
                    socket = str(member.state_dir / "control.socket")
                    views[member.name] = (
                        parse(await curl("--unix-socket", socket, "http://x/core/1.0/metrics")),
                        parse(
                            await curl(
                                *("--cacert", str(member.state_dir / "cluster.crt")),
                                *("--cert", str(member.state_dir / "server.crt")),
                                *("--key", str(member.state_dir / "server.key")),
                                f"https://{member.address}/core/1.0/metrics",
                            )
                        ),
                    )
                ages = [
                    len(v[0].get("microtrio_heartbeat_age_seconds", [])) for v in views.values()
                ]
                if ages == [3, 3, 3]:
                    break
                await trio.sleep(0.1)
    for name, (local, remote) in views.items():
        for samples in (local, remote):
            missing = [f for f in CURL_FAMILIES if f not in samples]
            assert not missing, f"{name}: {missing}"
            assert one(samples, "microtrio_raft_term") >= 1
            assert one(samples, "microtrio_raft_log_bytes") > 0
            assert one(samples, "microtrio_raft_applied_index") >= 5
            assert sum(v for _, v in samples["microtrio_api_request_duration_seconds_count"]) > 0
        assert sum(v for _, v in local["microtrio_db_read_barrier_seconds_count"]) >= 1
        lags = local.get("microtrio_raft_peer_lag_entries", [])
        if name == leader.name:
            assert sorted(lab["peer"] for lab, _ in lags) == sorted(
                str(m.node_id) for m in cluster.members if m is not leader
            )
        else:
            assert lags == []
    writes = sum(v for _, v in views[leader.name][0]["microtrio_db_commit_seconds_count"])
    assert writes >= 1  # the leader replicated the batches
