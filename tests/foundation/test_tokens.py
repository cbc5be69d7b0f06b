from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from microtrio import ValidationError
from microtrio._cluster._tokens import (
    JoinToken,
    decode_token,
    encode_token,
    new_secret,
    secrets_equal,
)

FP = "ab" * 32


def _raw(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_secret_shape() -> None:
    a, b = new_secret(), new_secret()
    assert len(a) == 64 and int(a, 16) >= 0 and a == a.lower()
    assert a != b
    assert secrets_equal(a, a) and not secrets_equal(a, b)


def test_round_trip_and_exact_wire_keys() -> None:
    token = JoinToken(new_secret(), FP, ("127.0.0.1:8443", "[::1]:9000"))
    text = encode_token(token)
    assert decode_token(text) == token
    assert token.encode() == text
    data = json.loads(base64.b64decode(text, validate=True))
    assert data == {
        "secret": token.secret,
        "fingerprint": FP,
        "join_addresses": ["127.0.0.1:8443", "[::1]:9000"],
    }


def test_decodes_microcluster_style_token() -> None:
    # Go's encoding/json output with spaces-free separators and key order of the struct.
    text = _raw({"secret": "s" * 64, "fingerprint": FP, "join_addresses": ["10.0.0.1:8443"]})
    assert decode_token(text).join_addresses == ("10.0.0.1:8443",)


GOOD = {"secret": "a" * 64, "fingerprint": FP, "join_addresses": ["10.0.0.1:8443"]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (None, "empty"),
        ("!!!notbase64", "base64"),
        ("YWJ", "base64"),  # bad padding
        (base64.b64encode(b"not json").decode(), "JSON"),
        (base64.b64encode(b"\xff\xfe").decode(), "JSON"),
        (_raw([1, 2]), "object"),
        (_raw({k: v for k, v in GOOD.items() if k != "secret"}), "missing secret"),
        (_raw({k: v for k, v in GOOD.items() if k != "fingerprint"}), "missing fingerprint"),
        (_raw({k: v for k, v in GOOD.items() if k != "join_addresses"}), "missing join"),
        (_raw({**GOOD, "secret": 5}), "secret"),
        (_raw({**GOOD, "secret": ""}), "secret"),
        (_raw({**GOOD, "fingerprint": "ab" * 31}), "fingerprint"),
        (_raw({**GOOD, "fingerprint": "AB" * 32}), "fingerprint"),
        (_raw({**GOOD, "fingerprint": None}), "fingerprint"),
        (_raw({**GOOD, "join_addresses": "10.0.0.1:8443"}), "join_addresses"),
        (_raw({**GOOD, "join_addresses": []}), "join_addresses"),
        (_raw({**GOOD, "join_addresses": [7]}), "join address"),
        (_raw({**GOOD, "join_addresses": ["host:8443"]}), "join address"),
    ],
)
def test_malformed_tokens(text: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        decode_token(text)
