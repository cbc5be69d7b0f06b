"""Property tests of the JSON wire shapes the cluster layer parses from other machines.

``JoinRequest`` arrives from untrusted callers (join admission is open), ``TokenResponse``
from the leader a joiner dialled, ``HeartbeatInfo`` from the leader, ``DqliteMember`` from
an operator's recovery edit. Each parser returns a value or raises one of our errors
(ValidationError for bad shapes), whatever JSON it gets; a value it returns survives a
round trip through its own ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microtrio import MicrotrioError
from microtrio._cluster._admission import JoinRequest, TokenResponse
from microtrio._cluster._heartbeat import HeartbeatInfo
from microtrio._cluster._recovery import DqliteMember
from microtrio._db._extensions import decode_extensions

from ._fuzz import fuzz_settings

KEYS = [
    "name", "address", "certificate", "secret", "schema_internal", "schema_external",
    "internal_api_extensions", "external_api_extensions", "extensions", "role",
    "cluster_cert", "cluster_key", "cluster_members", "trusted_member",
    "ClusterAdditionalCerts", "cert", "key", "ca", "begin_round", "max_schema_internal",
    "max_schema_external", "leader_address", "dqlite_roles", "id", "last_heartbeat", "status",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["member1", "127.0.0.1:1", "voter", "2001-13-45", "-----BEGIN CERT"])
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=8,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        key: values
        | st.dictionaries(st.sampled_from(["127.0.0.1:1", "member1"]), values, max_size=2)
        for key in KEYS
    },
)
PARSERS: list[Callable[[Any], Any]] = [
    JoinRequest.from_dict,
    TokenResponse.from_dict,
    HeartbeatInfo.from_dict,
    DqliteMember.from_dict,
    decode_extensions,
]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__qualname__)
@fuzz_settings(40)
@given(values | shaped)
def test_wire_json_parsers(parse: Callable[[Any], Any], data: Any) -> None:
    try:
        value = parse(data)
    except MicrotrioError:
        return
    to_dict = getattr(value, "to_dict", None)
    if to_dict is not None:
        assert parse(to_dict()) == value
