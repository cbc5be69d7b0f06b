"""Validation of member names, addresses and extension server names.

Member names are FQDN-style (reference 7.3): 1-255 characters of dot-separated hostname
labels, each label 1-63 characters of letters, digits and inner hyphens. So ``c/1``,
``_x`` and ``x.`` are rejected.

Addresses are ``ip:port`` with an IP literal (IPv6 in brackets), as microcluster parses
them with ``netip.AddrPort``; host names are refused. Where the reference says so (a
listener address without a port), :data:`DEFAULT_PORT` is used.
"""

from __future__ import annotations

import ipaddress
import re

from .._errors import ValidationError

__all__ = [
    "DEFAULT_PORT",
    "RESERVED_SERVER_NAMES",
    "format_address",
    "parse_address",
    "validate_address",
    "validate_name",
    "validate_server_name",
]

DEFAULT_PORT = 8443
"""Port used when a listener address has none (reference 2.1)."""

RESERVED_SERVER_NAMES = frozenset({"core", "unix"})
"""Extension server names that applications may not use."""

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid FQDN-style member name, else raise ValidationError."""
    if not isinstance(name, str):
        raise ValidationError(f"Invalid member name {name!r}: must be a string")
    if not 1 <= len(name) <= 255:
        raise ValidationError(f"Invalid member name {name!r}: must be 1-255 characters long")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValidationError(
                f"Invalid member name {name!r}: must be dot-separated hostname labels "
                "(letters, digits and inner hyphens, 1-63 characters each)"
            )
    return name


def validate_server_name(name: object) -> str:
    """Validate an extension (additional listener) server name: FQDN-style, not reserved."""
    valid = validate_name(name)
    if valid in RESERVED_SERVER_NAMES:
        raise ValidationError(f"Invalid server name {valid!r}: the name is reserved")
    return valid


def parse_address(
    address: object, *, default_port: int | None = None, allow_port_zero: bool = False
) -> tuple[str, int]:
    """Split ``ip:port`` into ``(ip, port)``; IPv6 must be bracketed (``[::1]:8443``).

    If ``default_port`` is given, an address without a port gets it. Port 0 ("let the OS
    choose") is accepted only with ``allow_port_zero``. The returned ip is the canonical
    text form (without brackets).
    """
    if not isinstance(address, str) or not address:
        raise ValidationError(f"Invalid address {address!r}: must be a non-empty string")
    host: str
    port_text: str | None
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValidationError(f"Invalid address {address!r}: unclosed '['")
        host = address[1:end]
        rest = address[end + 1 :]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValidationError(f"Invalid address {address!r}: junk after ']'")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValidationError(f"Invalid address {address!r}: not an IPv6 address") from exc
    else:
        if address.count(":") > 1:
            raise ValidationError(f"Invalid address {address!r}: IPv6 needs brackets")
        host, sep, port_part = address.partition(":")
        port_text = port_part if sep else None
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise ValidationError(
                f"Invalid address {address!r}: host must be an IP address"
            ) from exc
    if port_text is None:
        if default_port is None:
            raise ValidationError(f"Invalid address {address!r}: missing port")
        return str(ip), default_port
    lowest = 0 if allow_port_zero else 1
    # ASCII digits only: str.isdigit() also accepts '²' (int() refuses it) and other scripts.
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not lowest <= int(port_text) <= 65535:
        raise ValidationError(f"Invalid address {address!r}: port must be {lowest}-65535")
    return str(ip), int(port_text)


def format_address(host: str, port: int) -> str:
    """Join an IP and port into ``ip:port`` (IPv6 bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def validate_address(address: object, *, default_port: int | None = None) -> str:
    """Return the canonical ``ip:port`` form of ``address`` or raise ValidationError."""
    host, port = parse_address(address, default_port=default_port)
    return format_address(host, port)
