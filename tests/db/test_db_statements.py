"""Statement-level writes (``Database.execute`` / ``execute_many``) on one member, and the
codec that carries them to the leader."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _db_helpers import open_recorded

from microtrio import BadRequestError, ConflictError, OutcomeUnknownError, ProtocolError
from microtrio._db import SQLResult
from microtrio._db._statements import (
    FLAG_TEXT_RESULTS,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_reply,
    encode_request,
    normalize_statements,
)


def test_request_round_trip_keeps_types() -> None:
    statements = normalize_statements(
        [
            ("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (None, -(1 << 63), 1.5, "é;'", b"\x00\xff")),
            ("UPDATE t SET a = :a", {"a": True}),
        ]
    )
    request = decode_request(encode_request(statements, FLAG_TEXT_RESULTS))
    assert request.flags == FLAG_TEXT_RESULTS
    assert request.statements == [
        ("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (None, -(1 << 63), 1.5, "é;'", b"\x00\xff")),
        ("UPDATE t SET a = :a", {"a": 1}),
    ]


def test_bad_statements_are_refused_before_anything_runs() -> None:
    with pytest.raises(BadRequestError, match="64 bits"):
        normalize_statements([("SELECT ?", (1 << 63,))])
    with pytest.raises(BadRequestError, match="unsupported SQL parameter"):
        normalize_statements([("SELECT ?", (object(),))])
    with pytest.raises(BadRequestError, match="pair"):
        normalize_statements(["SELECT 1"])  # type: ignore[list-item]
    with pytest.raises(BadRequestError, match="sequence or a mapping"):
        normalize_statements([("SELECT ?", "x")])
    with pytest.raises(BadRequestError, match="No query"):
        normalize_statements([])
    good = encode_request(normalize_statements([("SELECT ?", (b"abc",))]))
    for bad in (b"", good[:-1], good + b"\x00", b"XXXX" + good[4:]):
        with pytest.raises(BadRequestError):
            decode_request(bad)


def test_reply_round_trip_and_errors() -> None:
    results = [
        SQLResult("exec", rows_affected=3, last_insert_rowid=7),
        SQLResult("select", columns=("a", "b"), rows=((1, b"x"), (None, "y")), last_insert_rowid=7),
    ]
    assert decode_reply(encode_reply(results)) == results
    with pytest.raises(ConflictError, match="UNIQUE"):
        decode_reply(encode_error_reply(ConflictError("UNIQUE constraint failed: t.a")))
    with pytest.raises(OutcomeUnknownError, match="lost"):
        decode_reply(encode_error_reply(OutcomeUnknownError("lost")))
    with pytest.raises(ProtocolError):
        decode_reply(encode_reply(results)[:-1])


async def test_execute_on_one_member(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            db, recorder = await open_recorded(nursery, tmp_path / "microtrio.db")
            await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
            first = await db.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", b"\x00\x01"))
            assert first == SQLResult("exec", rows_affected=1, last_insert_rowid=1)
            named = await db.execute(
                "INSERT INTO t (k, v) VALUES (:k, :v) RETURNING id, v", {"k": "b", "v": b"\xff"}
            )
            assert named.type == "select"
            assert named.columns == ("id", "v")
            assert named.rows == ((2, b"\xff"),)  # blobs stay bytes
            results = await db.execute_many(
                [("UPDATE t SET v = ? WHERE k = ?", (b"z", "a")), ("SELECT count(*) FROM t", ())]
            )
            assert results[0].rows_affected == 1
            assert results[1].rows == ((2,),)
            entries = len(recorder.entries)
            # a failing statement rolls the whole call back and commits nothing
            with pytest.raises(ConflictError, match="UNIQUE"):
                await db.execute_many(
                    [("INSERT INTO t (k) VALUES ('c')", ()), ("INSERT INTO t (k) VALUES ('a')", ())]
                )
            with pytest.raises(BadRequestError, match="no such table"):
                await db.execute("INSERT INTO nope VALUES (1)")
            with pytest.raises(BadRequestError, match="64 bits"):
                await db.execute("INSERT INTO t (k) VALUES (?)", (1 << 64,))
            assert len(recorder.entries) == entries
            rows = await db.read(lambda conn: conn.execute("SELECT k, v FROM t ORDER BY id"))
            assert rows == [("a", b"z"), ("b", b"\xff")]
            await db.close()
