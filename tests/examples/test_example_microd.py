"""The example application (``examples/microd``) on one member, in-process and via its CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml
from _member_support import CEILING, REPO, run_member

import microtrio
from examples.microd import API_EXTENSIONS, VERSION, daemon_args
from examples.microd.cli import build_parser


async def test_schema_extensions_endpoint_and_hooks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="microd")
    async with trio.open_nursery() as nursery:
        member = await run_member(
            nursery, tmp_path, daemon_args(drain_timeout=2.0), config={"a": "b"}
        )
        app = member.app
        with trio.fail_after(CEILING):
            # schema updates ran: both tables exist and enforce their UNIQUE constraints
            result = await app.sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('extended_table', 'some_other_table') ORDER BY name"
            )
            assert isinstance(result, dict)
            assert result["Results"][0]["rows"] == [["extended_table"], ["some_other_table"]]
            await app.sql("INSERT INTO extended_table (key, value) VALUES ('k', 'v')")
            with pytest.raises(microtrio.MicrotrioError, match="UNIQUE"):
                await app.sql("INSERT INTO extended_table (key, value) VALUES ('k', 'w')")

            # API extensions in GET /core/1.0, after microtrio's internal ones
            status = await app.status()
            assert status["version"] == VERSION
            assert status["extensions"][-2:] == list(API_EXTENSIONS)
            assert any(e.startswith("internal:") for e in status["extensions"])

            # POST /1.0/extended: control socket, and TLS without a client certificate
            response = await member.request("POST", "/1.0/extended", json_body={"message": "hi"})
            assert response.status_code == 200, response.text
            assert response.json()["metadata"] == f"member1 ({member.address}) says 'hi'"
            response = await member.request("POST", "/1.0/extended", via="tls", cert=False)
            assert response.status_code == 200, response.text
            assert "says 'Testing 1 2 3...'" in response.json()["metadata"]
            # a notification answers for itself and does not fan out
            response = await member.request(
                "POST",
                "/1.0/extended",
                via="tls",
                json_body={"sender": "127.0.0.1:1", "message": "yo"},
                headers={"User-Agent": "lxd-cluster-notifier"},
            )
            assert response.json()["metadata"] == (
                f"member1 ({member.address}) received 'yo' from 127.0.0.1:1"
            )
            # malformed input: a 400 envelope
            response = await member.request("POST", "/1.0/extended", content=b"[1")
            assert response.status_code == 400
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records if r.name == "microd.hooks"]
    assert "member1: PreInit (bootstrap=True, config={'a': 'b'})" in messages
    assert "member1: PostBootstrap (config={'a': 'b'})" in messages
    assert any(m.endswith(": OnStart") for m in messages)


def test_every_hook_is_implemented() -> None:
    hooks = daemon_args().hooks
    assert hooks is not None
    missing = [f for f in microtrio.Hooks.__dataclass_fields__ if getattr(hooks, f) is None]
    assert missing == []


def test_cli_parser_keeps_microtrio_commands() -> None:
    parser = build_parser()
    for argv in (["cluster", "list"], ["tokens", "add", "m2"], ["sql", "select 1"], ["waitready"]):
        assert callable(parser.parse_args(argv).func)
    ns = parser.parse_args(["extended", "127.0.0.1:9001", "-m", "x"])
    assert (ns.address, ns.message) == ("127.0.0.1:9001", "x")
    assert parser.parse_args(["extended"]).address == ""


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.microd", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_cli_daemon_init_extended(tmp_path: Path) -> None:
    """The README's example walk-through on one member, as a user types it."""
    env = {**os.environ, "STATE_DIR": str(tmp_path / "m1"), "PYTHONPATH": str(REPO)}
    log = tmp_path / "daemon.log"
    with log.open("w") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "examples.microd", "daemon", "-v"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        assert _cli("waitready", "-t", "30", env=env).returncode == 0
        done = _cli("init", "member1", "127.0.0.1:0", "--bootstrap", env=env)
        assert done.returncode == 0, done.stderr
        config = yaml.safe_load((tmp_path / "m1" / "daemon.yaml").read_text())
        address = config["address"]
        local = _cli("extended", "-m", "hello", env=env)
        assert local.returncode == 0, local.stderr
        assert local.stdout.strip() == f"member1 ({address}) says 'hello'"
        remote = _cli("extended", address, env=env)
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.strip() == f"member1 ({address}) says 'Testing 1 2 3...'"
        assert _cli("shutdown", env=env).returncode == 0
        assert daemon.wait(timeout=30) == 0, log.read_text()
        text = log.read_text()  # the CLI's text format names the member of every line
        assert "INFO [member1] microd.hooks: member1: PostBootstrap" in text
        assert "INFO [member1] microtrio.daemon: member1: stopping" in text
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


async def test_extended_fans_out_to_the_other_members(tmp_path: Path) -> None:
    """Two members wired by hand (shared cluster certificate, B's row in A's database, as a
    join would leave them), plus a row for a member that is down."""
    import shutil

    from microtrio._cluster._members import insert_member

    async with trio.open_nursery() as nursery:
        a = await run_member(nursery, tmp_path / "a", daemon_args(drain_timeout=2.0))
        b_dir = tmp_path / "b" / "member1"
        b_dir.mkdir(parents=True)
        for name in ("cluster.crt", "cluster.key"):
            shutil.copy(a.state_dir / name, b_dir / name)
        b = await run_member(nursery, tmp_path / "b", daemon_args(drain_timeout=2.0))
        daemon = a.app.daemon
        assert daemon is not None
        with trio.fail_after(CEILING):
            for name, address in (("member2", b.address), ("member3", "127.0.0.1:1")):
                await daemon.state.database.transaction(
                    lambda conn, n=name, ad=address: insert_member(
                        conn,
                        name=n,
                        address=ad,
                        certificate=f"not a certificate: {n}",
                        schema_internal=0,
                        schema_external=0,
                        extensions=[],
                    )
                )
            response = await a.request("POST", "/1.0/extended", json_body={"message": "hi"})
        assert response.status_code == 200, response.text
        lines = response.json()["metadata"].split("\n")
        assert lines[0] == f"member1 ({a.address}) says 'hi'"
        assert sorted(lines[1:])[0].startswith("error: ")  # member3 is down: reported, not fatal
        assert sorted(lines[1:])[1] == f"member1 ({b.address}) received 'hi' from {a.address}"
        nursery.cancel_scope.cancel()
