"""Property tests of the YAML files of the state directory: daemon.yaml and truststore/.

Whatever the bytes on disk (random, mutated valid files, valid YAML of the wrong shape,
deep nesting, bad UTF-8, scalars such as ``2001-13-45`` that YAML fails to construct),
loading returns a value or raises StateError whose message names the file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from microtrio import StateError
from microtrio._certs import generate_cert_key_pair
from microtrio._cluster._truststore import TrustedMember, Truststore
from microtrio._state import DaemonConfig, StateDir

from ._fuzz import edits, fuzz_settings, mutate

PEM = generate_cert_key_pair("member1").cert.decode()
GOOD_DAEMON = yaml.safe_dump(
    {"name": "member1", "address": "10.0.0.1:8443", "servers": {"web": {"address": ""}}}
).encode()
GOOD_TRUST = yaml.safe_dump(
    TrustedMember("member1", "10.0.0.1:8443", PEM).to_dict(), sort_keys=False
).encode()

yaml_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["2001-13-45", "10.0.0.1:8443", "member1", PEM, "../x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "address", "servers", "certificate", "x"])
            | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)
raw_texts = st.one_of(
    st.binary(max_size=120),
    yaml_values.map(lambda v: yaml.safe_dump(v).encode()),
    st.sampled_from(
        [
            b"",
            b"[" * 1000,
            b"a: " + b"{x: " * 1000,
            b"name: 2001-13-45\naddress: x",
            b"\xff\xfe\x00n",
            b"a: &a [*a]",
            b"!!python/object/apply:os.system ['true']",
            b"name: member1\naddress: 10.0.0.1:1\nservers: [1]",
        ]
    ),
)


def check_daemon_yaml(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = StateDir(tmp)
        state.daemon_yaml.write_bytes(data)
        try:
            config = state.load_daemon_config()
        except StateError as exc:
            assert str(state.daemon_yaml) in str(exc)
            return
        assert isinstance(config, DaemonConfig)
        assert isinstance(config.name, str) and isinstance(config.address, str)


def check_truststore_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "member1.yaml"
        path.write_bytes(data)
        store = Truststore(tmp)
        try:
            members = store.load()
        except StateError as exc:
            assert str(path) in str(exc)
            assert len(store) == 0
            return
        assert [m.der for m in members] == [m.der for m in store.members()]


@fuzz_settings(100)
@given(raw_texts)
def test_daemon_yaml_garbage(data: bytes) -> None:
    check_daemon_yaml(data)


@fuzz_settings(150)
@given(edits)
def test_daemon_yaml_mutated(changes: list[tuple[int, int, int]]) -> None:
    check_daemon_yaml(mutate(GOOD_DAEMON, changes))


@fuzz_settings(100)
@given(raw_texts)
def test_truststore_file_garbage(data: bytes) -> None:
    check_truststore_file(data)


@fuzz_settings(150)
@given(edits)
def test_truststore_file_mutated(changes: list[tuple[int, int, int]]) -> None:
    check_truststore_file(mutate(GOOD_TRUST, changes))


@pytest.mark.parametrize(
    "data", [b"\xff\xfename: x", b"[" * 1000, b"name: 2001-13-45"], ids=["utf8", "deep", "date"]
)
def test_known_crashers_are_state_errors(tmp_path: Path, data: bytes) -> None:
    """Regressions: each of these used to escape as UnicodeDecodeError, RecursionError or
    ValueError instead of a StateError naming the file."""
    check_daemon_yaml(data)
    check_truststore_file(data)
    state = StateDir(tmp_path)
    state.daemon_yaml.write_bytes(data)
    with pytest.raises(StateError, match="daemon.yaml"):
        state.load_daemon_config()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "m.yaml").write_bytes(data)
    with pytest.raises(StateError, match="m.yaml"):
        Truststore(tmp_path / "t").load()
