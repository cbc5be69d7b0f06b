"""The CLI commands in-process (``main(argv)``) against a member served by another thread."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from microtrio._cli import main

from .conftest import Member


def run(member: Member, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(member.state_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tokens_commands(shared_member: Member, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(shared_member, capsys, "tokens", "add", "node2", "-e", "0")
    assert code == 0, err
    token = out.strip()
    code, out, _ = run(shared_member, capsys, "tokens", "list", "-f", "yaml")
    assert yaml.safe_load(out) == [
        {"name": "node2", "tokens": token, "expires_at": "0001-01-01T00:00:00Z"}
    ]
    code, out, _ = run(shared_member, capsys, "tokens", "list", "-f", "csv")
    assert out.splitlines()[0] == "NAME,TOKENS,EXPIRES AT"
    code, _, err = run(shared_member, capsys, "tokens", "revoke", "node2")
    assert code == 0, err
    code, _, err = run(shared_member, capsys, "tokens", "revoke", "node2")
    assert code == 1 and err.startswith("Error: ") and len(err.splitlines()) == 1
    code, out, _ = run(shared_member, capsys, "tokens", "list", "-f", "json")
    assert json.loads(out) == []


def test_sql_commands(
    shared_member: Member, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(
        shared_member, capsys, "sql", "CREATE TABLE cli (v TEXT); INSERT INTO cli VALUES ('a;b')"
    )
    assert code == 0, err
    assert out.splitlines() == ["Rows affected: 0", "Rows affected: 1"]
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT v FROM cli"))
    code, out, err = run(shared_member, capsys, "sql", "-")
    assert code == 0, err
    assert "| a;b |" in out
    code, out, _ = run(shared_member, capsys, "sql", ".schema")
    assert "CREATE TABLE cli" in out and "INSERT" not in out
    code, out, _ = run(shared_member, capsys, "sql", ".dump")
    assert "INSERT INTO" in out and "a;b" in out
    code, _, err = run(shared_member, capsys, "sql", "SELECT * FROM nowhere")
    assert code == 1 and "nowhere" in err and len(err.splitlines()) == 1


def test_cluster_list_formats(shared_member: Member, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(shared_member, capsys, "cluster", "list", "-f", "json")
    (row,) = json.loads(out)
    assert row["name"] == "member1" and row["address"] == shared_member.address
    assert row["role"] == "voter" and row["status"] == "ONLINE" and len(row["fingerprint"]) == 12
    code, out, _ = run(shared_member, capsys, "cluster", "list", "-f", "compact")
    assert out.split()[:5] == ["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"]


def test_init_errors_are_one_line(
    shared_member: Member, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(shared_member, capsys, "init", "member1", "127.0.0.1:1", "--bootstrap")
    assert code == 1 and err == "Error: Unable to initialize cluster: Database is online\n"
    code, _, err = run(shared_member, capsys, "waitready", "-t", "5")
    assert code == 0, err
    with pytest.raises(SystemExit) as exit_info:
        main(["init", "x", "127.0.0.1:1"])  # neither --bootstrap nor --token
    assert exit_info.value.code == 2
