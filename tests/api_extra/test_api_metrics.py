"""``GET /core/1.0/metrics`` over the control socket and mutual TLS."""

from __future__ import annotations

from pathlib import Path

import trio
from _member_support import CEILING, run_member
from test_metrics_registry import check_exposition

import microtrio
from examples.kv import VERSION, daemon_args
from microtrio._api._metrics import instrument_committer
from microtrio._db import Database, ExtensionRegistry, LocalCommitter
from microtrio._metrics import MetricsRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in metrics")


async def test_before_init_over_the_control_socket(tmp_path: Path) -> None:
    app = microtrio.App(tmp_path / "m", args=microtrio.DaemonArgs(version="1", drain_timeout=2))
    with trio.fail_after(CEILING):
        async with app, app.local_client() as client:
            response = await client._http.get("/core/1.0/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    text = response.text
    check_exposition(text)
    assert 'microtrio_database_status{status="Database is not yet initialized"} 1' in text
    assert not any(line.startswith("microtrio_db_applied_index ") for line in text.splitlines())


async def test_metrics_over_unix_and_tls(tmp_path: Path) -> None:
    args = daemon_args(drain_timeout=2.0)
    async with trio.open_nursery() as nursery:
        member = await run_member(nursery, tmp_path, args)
        for i in range(3):
            put = await member.request("PUT", f"/1.0/kv/k{i}", via="tls", content=b"v")
            assert put.status_code == 200
        await member.request("GET", "/1.0/kv/missing", via="tls")

        response = await member.request("GET", "/core/1.0/metrics", via="tls")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CONTENT_TYPE
        text = response.text
        types = check_exposition(text)
        assert types["microtrio_api_request_duration_seconds"] == "histogram"
        assert types["microtrio_api_requests_total"] == "counter"
        put = 'listener="core",endpoint="kv",method="PUT"'
        assert _value(text, f'microtrio_api_requests_total{{{put},code="200"}}') == 3
        get = 'listener="core",endpoint="kv",method="GET",code="404"'
        assert _value(text, f"microtrio_api_requests_total{{{get}}}") == 1
        assert _value(text, f"microtrio_api_request_duration_seconds_count{{{put}}}") == 3
        assert _value(text, 'microtrio_database_status{status="Database is online"}') == 1
        assert _value(text, "microtrio_db_applied_index") >= 4  # bootstrap writes + 3 puts
        assert _value(text, "microtrio_db_transactions_total") >= 3
        assert _value(text, "microtrio_member_ready") == 1
        assert _value(text, "microtrio_db_commit_seconds_count") >= 3  # the daemon's committer
        assert _value(text, "microtrio_db_read_barrier_seconds_count") >= 1  # the GET
        info = f'microtrio_member_info{{address="{member.address}",name="member1",version="{VERSION}"}}'
        assert _value(text, info) == 1
        assert (
            _value(text, f'microtrio_listener_info{{address="{member.address}",listener="core"}}')
            == 1
        )

        # the control socket serves the same registry; its own requests are labelled unix
        unix = await member.request("GET", "/core/1.0/metrics")
        assert unix.status_code == 200
        check_exposition(unix.text)
        scrape = 'listener="core",endpoint="metrics",method="GET",code="200"'
        assert _value(unix.text, f"microtrio_api_requests_total{{{scrape}}}") == 1
        # untrusted callers: 403, and nothing is leaked
        untrusted = await member.request("GET", "/core/1.0/metrics", via="tls", cert=False)
        assert untrusted.status_code == 403
        assert "microtrio_" not in untrusted.text
        nursery.cancel_scope.cancel()


async def test_instrumented_committer_times_commits_and_read_barriers(tmp_path: Path) -> None:
    registry = MetricsRegistry()
    database = Database(
        tmp_path / "db.bin",
        extensions=ExtensionRegistry(),
        committer_factory=instrument_committer(registry, LocalCommitter),
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            await nursery.start(database.run)
            await database.open(bootstrap=True)
            opened = registry.histogram("microtrio_db_commit_seconds", "").count()
            assert opened >= 1  # the schema updates were a commit
            await database.transaction(lambda conn: conn.execute("CREATE TABLE t (x)"))
            await database.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
            assert registry.histogram("microtrio_db_commit_seconds", "").count() == opened + 2
            await database.read(lambda conn: conn.execute("SELECT * FROM t"))
            await database.read(lambda conn: conn.execute("SELECT * FROM t"), stale=True)
            barrier = registry.histogram("microtrio_db_read_barrier_seconds", "")
            assert barrier.count() == 1  # the stale read skipped the barrier
            text = registry.render()
            check_exposition(text)
            assert f"microtrio_db_commit_seconds_count {opened + 2}\n" in text
            await database.close()
