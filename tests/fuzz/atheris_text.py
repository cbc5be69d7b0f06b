"""Atheris harness: text decoders (join tokens, daemon.yaml, truststore files).

The first input byte picks the target; the rest is the token text (as Latin-1, and as
base64 of the raw bytes) or the YAML file. Tokens may raise only ValidationError, the
state files only StateError naming the file. Run it with
``python -m tests.fuzz._atheris text`` (see tests/fuzz/_atheris.py).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from microtrio import StateError, ValidationError
from microtrio._cluster._tokens import JoinToken, decode_token, encode_token
from microtrio._cluster._truststore import Truststore
from microtrio._state import StateDir

_TMP = tempfile.TemporaryDirectory(prefix="microtrio-atheris-")
_STATE = StateDir(_TMP.name)
_TRUST = Path(_TMP.name) / "truststore"
_TRUST.mkdir()
SEEDS = [
    b"\x00" + encode_token(JoinToken("ab" * 32, "cd" * 32, ("10.0.0.1:8443",))).encode(),
    b"\x01" + base64.b64decode(encode_token(JoinToken("s", "cd" * 32, ("[::1]:1",)))),
    b"\x02name: member1\naddress: 10.0.0.1:8443\nservers:\n  web: {address: ''}\n",
    b"\x03name: member1\naddress: 10.0.0.1:8443\ncertificate: x\n",
]


def _token(text: str) -> None:
    try:
        token = decode_token(text)
    except ValidationError:
        return
    assert decode_token(encode_token(token)) == token


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        _token(body.decode("latin-1"))
    elif mode == 1:
        _token(base64.b64encode(body).decode())
    else:
        path = _STATE.daemon_yaml if mode == 2 else _TRUST / "member1.yaml"
        path.write_bytes(body)
        try:
            _STATE.load_daemon_config() if mode == 2 else Truststore(_TRUST).load()
        except StateError as exc:
            assert str(path) in str(exc)
