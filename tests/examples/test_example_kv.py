"""The key-value service (``examples/kv``) on one member, and driven by the bench client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from _member_support import CEILING, REPO, run_member

from examples.kv import daemon_args

LOAD_PY = REPO.parent / "shared" / "bench" / "load.py"


async def test_put_get_delete(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        member = await run_member(nursery, tmp_path, daemon_args(drain_timeout=2.0))
        with trio.fail_after(CEILING):
            value = bytes(range(256)) * 3  # not UTF-8: stored and answered as raw bytes
            put = await member.request("PUT", "/1.0/kv/alpha", via="tls", content=value)
            assert put.status_code == 200, put.text
            assert put.json()["type"] == "sync"

            for path in ("/1.0/kv/alpha", "/1.0/kv/alpha?stale=1"):
                got = await member.request("GET", path, via="tls")
                assert got.status_code == 200
                assert got.headers["content-type"] == "application/octet-stream"
                assert got.content == value

            # overwrite, then the control socket sees the new value
            await member.request("PUT", "/1.0/kv/alpha", via="tls", content=b"v2")
            assert (await member.request("GET", "/1.0/kv/alpha")).content == b"v2"

            missing = await member.request("GET", "/1.0/kv/nope", via="tls")
            assert missing.status_code == 404
            assert missing.json()["error"] == "No key 'nope'"

            deleted = await member.request("DELETE", "/1.0/kv/alpha", via="tls")
            assert deleted.status_code == 200
            assert (await member.request("GET", "/1.0/kv/alpha", via="tls")).status_code == 404
            assert (await member.request("DELETE", "/1.0/kv/alpha", via="tls")).status_code == 404

            # trusted callers only; other methods are 501; over-long keys are 400
            untrusted = await member.request(
                "PUT", "/1.0/kv/x", via="tls", content=b"1", cert=False
            )
            assert untrusted.status_code == 403
            assert (
                await member.request("GET", "/1.0/kv/x", via="tls", cert=False)
            ).status_code == 403
            assert (await member.request("POST", "/1.0/kv/x", via="tls")).status_code == 501
            long_key = "k" * 1025
            assert (await member.request("GET", f"/1.0/kv/{long_key}")).status_code == 400

            # concurrent writers all land (they are grouped into batches by the writer)
            async def put_one(i: int) -> None:
                r = await member.request("PUT", f"/1.0/kv/c{i}", content=str(i).encode())
                assert r.status_code == 200

            async with trio.open_nursery() as writers:
                for i in range(20):
                    writers.start_soon(put_one, i)
            rows = await member.app.sql("SELECT count(*) FROM kv WHERE key LIKE 'c%'")
            assert isinstance(rows, dict)
            assert rows["Results"][0]["rows"] == [[20]]
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not LOAD_PY.exists(), reason=f"bench client not found at {LOAD_PY}")
async def test_bench_client_drives_it(tmp_path: Path) -> None:
    """load.py --system http-kv --path-template /1.0/kv/{key} over mutual TLS: no errors."""
    async with trio.open_nursery() as nursery:
        member = await run_member(nursery, tmp_path, daemon_args(drain_timeout=2.0))
        d = member.state_dir
        command = [
            sys.executable,
            str(LOAD_PY),
            "--system=http-kv",
            "--path-template=/1.0/kv/{key}",
            f"--urls=https://{member.address}",
            "--mode=mixed",
            "-c",
            "4",
            "-t",
            "1",
            "--warmup=0.2",
            "--keys=50",
            f"--cacert={d / 'cluster.crt'}",
            f"--cert={d / 'server.crt'}",
            f"--key={d / 'server.key'}",
        ]
        with trio.fail_after(60):
            done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert result["errors"] == 0, result.get("error_samples")
        assert result["prefill_errors"] == 0
        assert result["ops"] > 0
        nursery.cancel_scope.cancel()


def test_cli_is_microtrios_with_the_kv_daemon() -> None:
    from examples.kv import service
    from examples.kv.cli import _cmd_daemon, build_parser

    parser = build_parser()
    ns = parser.parse_args(["daemon", "--heartbeat", "2s"])
    assert ns.func is _cmd_daemon and ns.heartbeat == 2.0 and ns.lease_read is False
    assert parser.parse_args(["daemon", "--lease-read"]).lease_read is True
    assert callable(parser.parse_args(["init", "kv1", "127.0.0.1:0", "--bootstrap"]).func)
    with pytest.raises(SystemExit):
        parser.parse_args(["extended"])
    args = service.daemon_args(heartbeat_interval=2.0, lease_read=True)
    assert args.heartbeat == 2.0 and set(args.servers) == {"kv"} and args.lease_read


async def test_every_put_is_a_write(tmp_path: Path) -> None:
    """A PUT of the value a key already has still changes the row (its revision), so it
    is replicated like any other write."""
    async with trio.open_nursery() as nursery:
        member = await run_member(nursery, tmp_path, daemon_args(drain_timeout=2.0))
        with trio.fail_after(CEILING):
            for _ in range(3):
                put = await member.request("PUT", "/1.0/kv/same", via="tls", content=b"v")
                assert put.status_code == 200, put.text
            rows = await member.app.sql("SELECT revision FROM kv WHERE key = 'same'")
            assert isinstance(rows, dict)
            assert rows["Results"][0]["rows"] == [[3]]
        nursery.cancel_scope.cancel()
