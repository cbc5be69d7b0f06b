from __future__ import annotations

import pytest

from microtrio import ValidationError
from microtrio._cluster._names import (
    DEFAULT_PORT,
    parse_address,
    validate_address,
    validate_name,
    validate_server_name,
)


@pytest.mark.parametrize(
    "name",
    ["a", "c1", "member-1", "node1.example.com", "A-b.C-d", "x" * 63, ".".join(["a" * 63] * 4)],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "c/1",
        "_x",
        "x.",
        ".x",
        "a..b",
        "-a",
        "a-",
        "a_b",
        "a b",
        "x" * 64,
        "é",
        ".".join(["a" * 63] * 4) + ".a",  # 256 characters
        None,
        3,
    ],
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(ValidationError):
        validate_name(name)


@pytest.mark.parametrize("name", ["core", "unix"])
def test_reserved_server_names(name: str) -> None:
    validate_name(name)
    with pytest.raises(ValidationError, match="reserved"):
        validate_server_name(name)
    assert validate_server_name("metrics") == "metrics"
    with pytest.raises(ValidationError):
        validate_server_name("bad_name")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[::1]:9000", ("::1", 9000)),
        ("[2001:DB8::1]:65535", ("2001:db8::1", 65535)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "127.0.0.1",
        "localhost:8443",
        "::1:8443",
        "[::1]",
        "[::1:8443",
        "[::1]x8443",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:port",
        "300.1.1.1:80",
        "[1.2.3.4]:80",
        None,
    ],
)
def test_invalid_addresses(address: object) -> None:
    with pytest.raises(ValidationError):
        parse_address(address)


def test_default_port_and_zero() -> None:
    assert parse_address("127.0.0.1", default_port=DEFAULT_PORT) == ("127.0.0.1", 8443)
    assert validate_address("[::1]", default_port=DEFAULT_PORT) == "[::1]:8443"
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    assert validate_address("[0:0::1]:80") == "[::1]:80"
