"""Property tests of the join-token decoder and the name/address validators it relies on.

A token arrives from an operator (CLI argument, JSON body) and is attacker-controlled:
:func:`decode_token` must return a :class:`JoinToken` or raise ValidationError, never
anything else, whatever the text, the base64 content or the JSON inside it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microtrio import ValidationError
from microtrio._cluster._names import parse_address, validate_address, validate_name
from microtrio._cluster._tokens import JoinToken, decode_token, encode_token, new_secret

from ._fuzz import edits, fuzz_settings, mutate

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
addresses = st.one_of(
    st.text(max_size=30),
    st.builds(
        "{}.{}.{}.{}:{}".format, *[st.integers(0, 300)] * 4, st.text("0123456789²٣", max_size=7)
    ),
    st.builds(
        "[{}]:{}".format,
        st.text("0123456789abcdef:", max_size=20),
        st.text("0123456789", max_size=6),
    ),
)
fingerprints = st.text("0123456789abcdef", min_size=64, max_size=64)
token_dicts = st.fixed_dictionaries(
    {},
    optional={
        "secret": st.text(max_size=70) | json_values,
        "fingerprint": fingerprints | fingerprints.map(lambda f: f + "\n") | json_values,
        "join_addresses": st.lists(addresses, max_size=3) | json_values,
    },
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def check_token(text: object) -> None:
    try:
        token = decode_token(text)
    except ValidationError:
        return
    assert isinstance(token, JoinToken)
    assert re.fullmatch(r"[0-9a-f]{64}", token.fingerprint)
    assert token.join_addresses and all(validate_address(a) == a for a in token.join_addresses)
    assert decode_token(encode_token(token)) == token


@fuzz_settings(200)
@given(st.text(max_size=100) | json_values)
def test_token_random_text(text: object) -> None:
    check_token(text)


@fuzz_settings(300)
@given(token_dicts)
def test_token_random_json_objects(data: dict[str, Any]) -> None:
    check_token(b64(json.dumps(data).encode()))


@fuzz_settings(200)
@given(json_values | st.binary(max_size=80))
def test_token_random_base64_content(content: object) -> None:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    check_token(b64(raw))


@fuzz_settings(200)
@given(edits)
def test_token_mutated(changes: list[tuple[int, int, int]]) -> None:
    token = JoinToken(new_secret(), "ab" * 32, ("10.0.0.1:8443", "[::1]:9000"))
    raw = base64.b64decode(encode_token(token))
    check_token(b64(mutate(raw, changes)))
    check_token(mutate(encode_token(token).encode(), changes).decode("latin-1"))


def test_token_deeply_nested_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        decode_token(b64(b"[" * 100_000))


@pytest.mark.parametrize("port", ["\u00b2", "\u0663", "0" * 5000, "+1", " 1", "1\n"], ids=range(6))
def test_address_with_a_strange_port_is_a_validation_error(port: str) -> None:
    with pytest.raises(ValidationError):
        validate_address(f"10.0.0.1:{port}")


@pytest.mark.parametrize("name", ["member1\n", "a.b\n", "\nx"])
def test_name_with_a_newline_is_a_validation_error(name: str) -> None:
    with pytest.raises(ValidationError):
        validate_name(name)


def test_fingerprint_with_a_trailing_newline_is_refused() -> None:
    data = {"secret": "s", "fingerprint": "ab" * 32 + "\n", "join_addresses": ["10.0.0.1:1"]}
    with pytest.raises(ValidationError, match="fingerprint"):
        decode_token(b64(json.dumps(data).encode()))


@fuzz_settings(300)
@given(st.text(max_size=40) | json_values)
def test_names_and_addresses(value: object) -> None:
    """Validators return a canonical value or raise ValidationError; names stay path-safe."""
    try:
        name = validate_name(value)
    except ValidationError:
        pass
    else:
        assert re.fullmatch(r"[A-Za-z0-9.-]{1,255}", name) and ".." not in name
    for default in (None, 8443):
        try:
            host, port = parse_address(value, default_port=default)
        except ValidationError:
            continue
        assert 1 <= port <= 65535
        assert validate_address(validate_address(value, default_port=default)) == (
            validate_address(value, default_port=default)
        )
        assert host
