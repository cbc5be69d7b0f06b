"""Join tokens (reference 7.3).

A token string is the standard base64 of the JSON object
``{"secret": <64 hex chars>, "fingerprint": <sha256 hex of cluster.crt>,
"join_addresses": ["ip:port", ...]}``. The secret is the only part that grants
admission; compare secrets with :func:`secrets_equal` (constant time).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets as _secrets
from dataclasses import dataclass
from typing import final

from .._errors import ValidationError
from ._names import validate_address

__all__ = ["JoinToken", "decode_token", "encode_token", "new_secret", "secrets_equal"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def new_secret() -> str:
    """32 random bytes, hex-encoded (64 lowercase characters)."""
    return _secrets.token_hex(32)


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


@final
@dataclass(frozen=True, slots=True)
class JoinToken:
    """The decoded content of a join token."""

    secret: str
    fingerprint: str
    join_addresses: tuple[str, ...]

    def encode(self) -> str:
        return encode_token(self)


def encode_token(token: JoinToken) -> str:
    """The token string: standard base64 of the JSON object with the exact wire keys."""
    payload = {
        "secret": token.secret,
        "fingerprint": token.fingerprint,
        "join_addresses": list(token.join_addresses),
    }
    return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(text: object) -> JoinToken:
    """Parse a token string; every malformation raises ValidationError with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("Invalid join token: empty or not a string")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("Invalid join token: not base64") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationError("Invalid join token: not JSON") from exc
    if not isinstance(data, dict):
        raise ValidationError("Invalid join token: not a JSON object")
    missing = [k for k in ("secret", "fingerprint", "join_addresses") if k not in data]
    if missing:
        raise ValidationError(f"Invalid join token: missing {', '.join(missing)}")
    secret, fp, addresses = data["secret"], data["fingerprint"], data["join_addresses"]
    if not isinstance(secret, str) or not secret:
        raise ValidationError("Invalid join token: secret must be a non-empty string")
    if not isinstance(fp, str) or not _HEX64.fullmatch(fp):
        raise ValidationError("Invalid join token: fingerprint must be 64 lowercase hex chars")
    if not isinstance(addresses, list) or not addresses:
        raise ValidationError("Invalid join token: join_addresses must be a non-empty list")
    checked: list[str] = []
    for address in addresses:
        try:
            checked.append(validate_address(address))
        except ValidationError as exc:
            raise ValidationError(f"Invalid join token: bad join address: {exc}") from exc
    return JoinToken(secret=secret, fingerprint=fp, join_addresses=tuple(checked))
