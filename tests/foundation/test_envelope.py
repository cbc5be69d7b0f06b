from __future__ import annotations

import json

import pytest

import microtrio
from microtrio._api._envelope import (
    error_from_exception,
    error_response,
    failure_response,
    status_for_exception,
    sync_response,
)


def test_sync_envelope_exact_fields() -> None:
    status, headers, body = sync_response({"a": 1})
    assert status == 200
    assert dict(headers)["Content-Type"] == "application/json"
    assert "X-Content-Type-Options" not in dict(headers)
    assert json.loads(body) == {
        "type": "sync",
        "status": "Success",
        "status_code": 200,
        "operation": "",
        "error_code": 0,
        "error": "",
        "metadata": {"a": 1},
    }
    assert sync_response().json()["metadata"] == {}
    assert sync_response(["/1.0"]).json()["metadata"] == ["/1.0"]


def test_failure_envelope() -> None:
    response = failure_response()
    assert response.status == 400
    assert response.json()["status"] == "Failure"
    assert response.json()["status_code"] == 400


def test_error_envelope_exact_fields() -> None:
    status, headers, body = error_response(404, "Member not found")
    assert status == 404
    assert dict(headers)["X-Content-Type-Options"] == "nosniff"
    assert dict(headers)["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": 404,
        "error": "Member not found",
        "metadata": None,
    }


@pytest.mark.parametrize(
    ("status", "text"),
    [(400, "Bad Request"), (403, "Forbidden"), (503, "Service Unavailable"), (599, "Unknown")],
)
def test_default_status_text(status: int, text: str) -> None:
    assert error_response(status).json()["error"] == text


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (microtrio.ValidationError("bad name"), 400),
        (microtrio.ForbiddenError("untrusted"), 403),
        (microtrio.NotFoundError("nope"), 404),
        (microtrio.ConflictError("dup"), 409),
        (microtrio.DatabaseNotOpenError("Database is offline"), 503),
        (microtrio.NoLeaderError("no leader"), 503),
        (microtrio.RemoteError("remote said so", 418), 418),
        (microtrio.StateError("broken"), 500),
        (ValueError("internal detail"), 500),
        (KeyError("x"), 500),
    ],
)
def test_exception_mapping(exc: BaseException, status: int) -> None:
    assert status_for_exception(exc) == status
    response = error_from_exception(exc)
    assert response.status == status
    assert response.json()["error_code"] == status
    if isinstance(exc, microtrio.MicrotrioError):
        assert response.json()["error"] == str(exc)
    else:
        assert response.json()["error"] == "Internal Server Error"  # no internals leaked


def test_error_without_message_uses_status_text() -> None:
    assert error_from_exception(microtrio.NotFoundError()).json()["error"] == "Not Found"
