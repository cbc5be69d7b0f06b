"""Every core endpoint of one bootstrapped member, over the control socket and mutual TLS."""

from __future__ import annotations

import base64
import json

import pytest

from microtrio._certs import CertKeyPair, fingerprint

from .conftest import VERSION, Member, call

SYNC_KEYS = {"type", "status", "status_code", "operation", "error_code", "error", "metadata"}


def assert_sync(status: int, body: dict[str, object]) -> object:
    assert status == 200, body
    assert set(body) == SYNC_KEYS
    assert body["type"] == "sync"
    assert body["status"] == "Success"
    assert body["status_code"] == 200
    assert body["error_code"] == 0 and body["error"] == "" and body["operation"] == ""
    return body["metadata"]


def assert_error(status: int, body: dict[str, object], code: int) -> str:
    assert status == code, body
    assert set(body) == SYNC_KEYS
    assert body["type"] == "error"
    assert body["status"] == "" and body["status_code"] == 0
    assert body["error_code"] == code
    assert body["metadata"] is None
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


@pytest.mark.parametrize("via", ["unix", "tls"])
async def test_root_and_status(shared_member: Member, via: str) -> None:
    assert assert_sync(*await call(shared_member, "GET", "/", via=via)) == ["/1.0"]
    meta = assert_sync(*await call(shared_member, "GET", "/core/1.0", via=via))
    assert meta == {
        "name": "member1",
        "address": shared_member.address,
        "version": VERSION,
        "ready": True,
        "extensions": ["internal:runtime_extension_v1", "internal:rename_core_endpoints", "ext_a"],
    }


async def test_status_is_open_to_untrusted_callers(
    shared_member: Member, stranger_pair: CertKeyPair
) -> None:
    meta = assert_sync(*await call(shared_member, "GET", "/core/1.0", via="tls", no_cert=True))
    assert isinstance(meta, dict) and meta["name"] == "member1"
    meta = assert_sync(
        *await call(shared_member, "GET", "/core/1.0", via="tls", pair=stranger_pair)
    )
    assert isinstance(meta, dict) and meta["address"] == shared_member.address


@pytest.mark.parametrize("via", ["unix", "tls"])
async def test_unknown_path_and_missing_method(shared_member: Member, via: str) -> None:
    assert_error(*await call(shared_member, "GET", "/core/1.0/nope", via=via), 404)
    assert_error(*await call(shared_member, "GET", "/core/1.0/ready/", via=via), 404)
    assert_error(*await call(shared_member, "DELETE", "/core/1.0", via=via), 501)
    assert_error(*await call(shared_member, "PUT", "/core/1.0/ready", via=via), 501)


async def test_control_endpoints_are_not_on_the_network(shared_member: Member) -> None:
    assert_error(*await call(shared_member, "GET", "/core/control/tokens", via="tls"), 404)
    assert_error(*await call(shared_member, "POST", "/core/control/shutdown", via="tls"), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/core/1.0/ready",
        "/core/1.0/cluster",
        "/core/internal/sql?schema=1",
        "/core/1.0/daemon/servers",
    ],
)
async def test_untrusted_tls_callers_get_403(
    shared_member: Member, stranger_pair: CertKeyPair, path: str
) -> None:
    assert_error(*await call(shared_member, "GET", path, via="tls", no_cert=True), 403)
    assert_error(*await call(shared_member, "GET", path, via="tls", pair=stranger_pair), 403)
    assert_error(*await call(shared_member, "GET", path, via="tls", host="10.9.9.9:1"), 403)
    status, body = await call(shared_member, "GET", path, via="tls")
    assert_sync(status, body)


@pytest.mark.parametrize("via", ["unix", "tls"])
async def test_ready_and_cluster_list(shared_member: Member, via: str) -> None:
    assert assert_sync(*await call(shared_member, "GET", "/core/1.0/ready", via=via)) == {}
    members = assert_sync(*await call(shared_member, "GET", "/core/1.0/cluster", via=via))
    assert isinstance(members, list) and len(members) == 1
    (row,) = members
    assert row["name"] == "member1"
    assert row["address"] == shared_member.address
    assert row["role"] == "voter"
    assert row["status"] == "ONLINE"
    assert row["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert row["schema_internal_version"] == 6 and row["schema_external_version"] == 0
    assert set(row) >= {"last_heartbeat", "extensions", "secret"}


async def test_tokens_issue_list_revoke(shared_member: Member) -> None:
    token = assert_sync(
        *await call(
            shared_member,
            "POST",
            "/core/control/tokens",
            json_body={"name": "member2", "expire_after": 0},
        )
    )
    assert isinstance(token, str)
    decoded = json.loads(base64.b64decode(token))
    assert set(decoded) == {"secret", "fingerprint", "join_addresses"}
    assert len(decoded["secret"]) == 64 and int(decoded["secret"], 16) >= 0
    assert decoded["fingerprint"] == fingerprint(shared_member.cluster_cert())
    assert decoded["join_addresses"] == [shared_member.address]
    records = assert_sync(*await call(shared_member, "GET", "/core/control/tokens"))
    assert records == [{"name": "member2", "token": token, "expires_at": "0001-01-01T00:00:00Z"}]
    # A second token for the same name conflicts and changes nothing.
    assert_error(
        *await call(shared_member, "POST", "/core/control/tokens", json_body={"name": "member2"}),
        409,
    )
    # Revoke over mutual TLS (the endpoint is on the network listener too).
    assert (
        assert_sync(*await call(shared_member, "DELETE", "/core/1.0/tokens/member2", via="tls"))
        == {}
    )
    assert assert_sync(*await call(shared_member, "GET", "/core/control/tokens")) == []
    assert_error(*await call(shared_member, "DELETE", "/core/1.0/tokens/member2"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "c/1"},
        {"name": "_x"},
        {"name": "x."},
        {"name": ""},
        {"name": 7},
        {"name": "ok", "expire_after": -1},
        {"name": "ok", "expire_after": "1h"},
        ["not", "an", "object"],
    ],
)
async def test_token_bad_input_is_400_and_changes_nothing(
    shared_member: Member, body: object
) -> None:
    assert_error(*await call(shared_member, "POST", "/core/control/tokens", json_body=body), 400)
    assert assert_sync(*await call(shared_member, "GET", "/core/control/tokens")) == []


@pytest.mark.parametrize(
    "path",
    ["/core/control/tokens", "/core/internal/sql", "/core/control", "/core/internal/truststore"],
)
async def test_malformed_json_is_400(shared_member: Member, path: str) -> None:
    error = assert_error(*await call(shared_member, "POST", path, content=b"{nope"), 400)
    assert "JSON" in error
    assert assert_sync(*await call(shared_member, "GET", "/core/control/tokens")) == []


@pytest.mark.parametrize("via", ["unix", "tls"])
async def test_sql_dump_and_schema(shared_member: Member, via: str) -> None:
    dump = assert_sync(*await call(shared_member, "GET", "/core/internal/sql", via=via))
    assert isinstance(dump, dict)
    assert "CREATE TABLE" in dump["text"] and "core_cluster_members" in dump["text"]
    assert "INSERT INTO" in dump["text"]
    schema = assert_sync(
        *await call(shared_member, "GET", "/core/internal/sql", via=via, params={"schema": "1"})
    )
    assert isinstance(schema, dict)
    assert "core_token_records" in schema["text"] and "INSERT INTO" not in schema["text"]


async def test_sql_query_one_transaction_quote_aware(shared_member: Member) -> None:
    query = "CREATE TABLE t1 (v TEXT); INSERT INTO t1 VALUES ('a;b'); SELECT v FROM t1"
    meta = assert_sync(
        *await call(shared_member, "POST", "/core/internal/sql", json_body={"query": query})
    )
    assert isinstance(meta, dict)
    results = meta["Results"]
    assert [r["type"] for r in results] == ["exec", "exec", "select"]
    assert results[1]["rows_affected"] == 1
    assert results[2]["columns"] == ["v"] and results[2]["rows"] == [["a;b"]]
    # A failing statement rolls the whole request back: the insert before it is undone.
    bad = "INSERT INTO t1 VALUES ('gone'); INSERT INTO missing VALUES (1)"
    status, body = await call(
        shared_member, "POST", "/core/internal/sql", json_body={"query": bad}, via="tls"
    )
    assert status >= 400 and body["type"] == "error"
    meta = assert_sync(
        *await call(
            shared_member,
            "POST",
            "/core/internal/sql",
            json_body={"query": "SELECT count(*) FROM t1"},
        )
    )
    assert isinstance(meta, dict) and meta["Results"][0]["rows"] == [[1]]
    assert_error(
        *await call(shared_member, "POST", "/core/internal/sql", json_body={"query": "  "}), 400
    )


async def test_servers_and_certificates_bad_input(shared_member: Member) -> None:
    assert assert_sync(*await call(shared_member, "GET", "/core/1.0/daemon/servers")) == {}
    assert_error(
        *await call(
            shared_member,
            "PUT",
            "/core/1.0/daemon/servers",
            json_body={"nosuch": {"address": "127.0.0.1:1"}},
        ),
        400,
    )
    pem = {"cert": "garbage", "key": "garbage"}
    assert_error(
        *await call(shared_member, "PUT", "/core/1.0/cluster/certificates/cluster", json_body=pem),
        400,
    )
    assert_error(
        *await call(shared_member, "PUT", "/core/1.0/cluster/certificates/a..b", json_body=pem),
        400,
    )


async def test_truststore_add_then_remove_controls_trust(
    shared_member: Member, stranger_pair: CertKeyPair
) -> None:
    path = "/core/1.0/ready"
    assert_error(*await call(shared_member, "GET", path, via="tls", pair=stranger_pair), 403)
    entry = {
        "name": "stranger",
        "address": "127.0.0.1:9",
        "certificate": stranger_pair.cert.decode(),
    }
    assert_sync(*await call(shared_member, "POST", "/core/internal/truststore", json_body=entry))
    assert (shared_member.state_dir / "truststore" / "stranger.yaml").exists()
    assert_sync(*await call(shared_member, "GET", path, via="tls", pair=stranger_pair))
    assert_sync(
        *await call(shared_member, "DELETE", "/core/internal/truststore/stranger", via="tls")
    )
    assert_error(*await call(shared_member, "GET", path, via="tls", pair=stranger_pair), 403)
    assert_error(*await call(shared_member, "DELETE", "/core/internal/truststore/stranger"), 404)
    bad = dict(entry, name="bad_name")
    assert_error(
        *await call(shared_member, "POST", "/core/internal/truststore", json_body=bad), 400
    )
    assert not (shared_member.state_dir / "truststore" / "bad_name.yaml").exists()


async def test_hooks_endpoint_and_target(shared_member: Member) -> None:
    assert_error(*await call(shared_member, "POST", "/core/internal/hooks/on-start"), 400)
    assert_error(*await call(shared_member, "POST", "/core/internal/hooks/nonsense"), 400)
    assert_sync(
        *await call(
            shared_member, "POST", "/core/internal/hooks/pre-remove", json_body={"force": True}
        )
    )
    assert_sync(
        *await call(
            shared_member,
            "POST",
            "/core/internal/hooks/post-remove",
            json_body={"force": False},
            params={"target": "member1"},
            via="tls",
        )
    )
    assert_error(
        *await call(
            shared_member,
            "POST",
            "/core/internal/hooks/post-remove",
            json_body={"force": False},
            params={"target": "nobody"},
        ),
        404,
    )
    assert_error(
        *await call(
            shared_member, "POST", "/core/internal/hooks/pre-remove", json_body={"force": "yes"}
        ),
        400,
    )


async def test_database_patch_and_member_delete(shared_member: Member) -> None:
    assert_sync(*await call(shared_member, "PATCH", "/core/internal/database"))
    assert_error(*await call(shared_member, "DELETE", "/core/1.0/cluster/nobody"), 404)
    # The only member cannot be removed; nothing changes.
    assert_error(*await call(shared_member, "DELETE", "/core/1.0/cluster/member1"), 400)
    members = assert_sync(*await call(shared_member, "GET", "/core/1.0/cluster"))
    assert isinstance(members, list) and len(members) == 1


async def test_init_on_initialised_member_is_refused(shared_member: Member) -> None:
    body = {"name": "other", "address": "127.0.0.1:1", "bootstrap": True}
    error = assert_error(*await call(shared_member, "POST", "/core/control", json_body=body), 400)
    assert "Database is online" in error


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("PATCH", "/core/internal/database", None, 200),
        ("DELETE", "/core/1.0/cluster/nobody", None, 404),
        ("PUT", "/core/1.0/cluster/certificates/a..b", {"cert": "", "key": ""}, 400),
        ("PUT", "/core/1.0/daemon/servers", {"nosuch": {"address": ""}}, 400),
        ("POST", "/core/internal/truststore", {"name": "x"}, 400),
        ("DELETE", "/core/internal/truststore/nobody", None, 404),
        ("PUT", "/core/internal/cluster/other", None, 400),
        ("POST", "/core/internal/sql", {"query": "SELECT 1"}, 200),
        ("POST", "/core/internal/hooks/pre-remove", {"force": True}, 200),
        ("DELETE", "/core/1.0/tokens/nobody", None, 404),
    ],
)
async def test_network_endpoints_over_mutual_tls(
    shared_member: Member, method: str, path: str, body: object, expected: int
) -> None:
    """Each endpoint mounted on the core listener answers a trusted caller (the expected
    code proves the handler ran) and refuses an untrusted one with 403 before anything."""
    status, answer = await call(shared_member, method, path, via="tls", json_body=body)
    assert status == expected, answer
    status, answer = await call(
        shared_member, method, path, via="tls", json_body=body, no_cert=True
    )
    assert_error(status, answer, 403)
