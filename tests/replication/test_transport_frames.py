"""Sans-IO parts of the Raft transport: frames, addresses, fault rules, the trust seam."""

from __future__ import annotations

import random
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microtrio._errors import ProtocolError, ValidationError
from microtrio._replication._faults import DROP, Faults, LinkRule
from microtrio._replication._frames import (
    CORE_ALPN_PROTOCOLS,
    FRAME_LENGTH,
    GOODBYE_FORBIDDEN,
    GOODBYE_MAX_SIZE,
    GOODBYE_PROTOCOL_ERROR,
    KEEPALIVE,
    RAFT_ALPN,
    RecordReader,
    decode_goodbye,
    encode_goodbye,
    encode_record,
)
from microtrio._replication._transport import (
    Frame,
    TransportConfig,
    client_certificates,
    decode_frame,
    encode_frame,
    parse_address,
)

payload_lists = st.lists(st.binary(max_size=64), max_size=20)


@settings(deadline=None)  # no wall-clock deadline on a loaded CI machine
@given(sender=st.integers(1, 2**64 - 1), payloads=payload_lists)
def test_frame_round_trip(sender: int, payloads: list[bytes]) -> None:
    data = encode_frame(sender, payloads)
    assert len(data) == 18 + sum(4 + len(p) for p in payloads)
    assert decode_frame(data) == Frame(sender=sender, payloads=tuple(payloads))


@settings(deadline=None)  # no wall-clock deadline on a loaded CI machine
@given(payloads=payload_lists.filter(bool), cut=st.integers(1, 10_000))
def test_every_truncation_is_rejected(payloads: list[bytes], cut: int) -> None:
    data = encode_frame(7, payloads)
    cut = cut % len(data) or 1
    with pytest.raises(ProtocolError):
        decode_frame(data[:-cut])


@settings(deadline=None)  # no wall-clock deadline on a loaded CI machine
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        decode_frame(data)
    except ProtocolError:
        pass


def _header(
    magic: bytes = b"MTRF", version: int = 1, flags: int = 0, sender: int = 1, count: int = 0
) -> bytes:
    return struct.pack(">4sBBQI", magic, version, flags, sender, count)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_header(magic=b"HTTP"), "magic"),
        (_header(version=2), "version"),
        (_header(flags=1), "flags"),
        (_header(sender=0), "sender"),
        (_header(count=1_000_000), "too many"),
        (_header(count=1) + struct.pack(">I", 5) + b"abc", "truncated"),
        (_header(count=0) + b"x", "trailing"),
        (b"MTRF", "shorter"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_frame(data)


def test_maximum_frame_size_is_enforced() -> None:
    data = encode_frame(1, [b"x" * 100])
    assert decode_frame(data, max_size=len(data)).payloads == (b"x" * 100,)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frame(data, max_size=len(data) - 1)


def test_encode_refuses_a_zero_sender() -> None:
    with pytest.raises(ValidationError):
        encode_frame(0, [])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("10.0.0.1", ("10.0.0.1", 8443)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1]", ("fe80::1", 8443)),
        ("::1", ("::1", 8443)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", ":80", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValidationError):
        parse_address(address)


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        TransportConfig(max_frame_size=10)
    with pytest.raises(ValidationError):
        TransportConfig(backoff_min=1.0, backoff_max=0.5)
    with pytest.raises(ValidationError):
        TransportConfig(peer_queue_size=0)


def test_faults_rules_and_partitions() -> None:
    faults = Faults(random.Random(0))
    assert not faults.enabled
    assert faults.decide(1, 2) == 0.0
    faults.partition([1], [2, 3])
    assert faults.decide(1, 2) == DROP and faults.decide(3, 1) == DROP
    assert faults.decide(2, 3) == 0.0
    faults.set_link(2, 3, delay=0.25)
    assert faults.decide(2, 3) == 0.25
    faults.heal()
    assert faults.decide(1, 2) == 0.0
    assert faults.rule(2, 3) == LinkRule(delay=0.25)
    faults.clear()
    assert not faults.enabled


def test_fault_drops_follow_the_seeded_rng() -> None:
    def fates(seed: int) -> list[float]:
        faults = Faults(random.Random(seed))
        faults.set_link(1, 2, drop=0.3)
        return [faults.decide(1, 2) for _ in range(1000)]

    assert fates(5) == fates(5)
    dropped = fates(5).count(DROP)
    assert 200 < dropped < 400


def test_faults_validation_and_receive_side_ownership() -> None:
    faults = Faults()
    with pytest.raises(ValidationError):
        faults.set_link(1, 2, drop=1.5)
    with pytest.raises(ValidationError):
        faults.set_link(1, 2, delay=-1.0)
    faults.attach(1)
    assert not faults.applies_on_receive(1)
    assert faults.applies_on_receive(2)
    faults.detach(1)
    assert faults.applies_on_receive(1)


def _pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def test_client_certificates_seam() -> None:
    from microtrio._certs import generate_cert_key_pair

    der = generate_cert_key_pair("seam").der
    tls = lambda chain: {"extensions": {"tls": {"client_cert_chain": chain}}}  # noqa: E731
    assert client_certificates(tls([_pem(der)])) == [der]
    assert client_certificates(tls([der])) == [der]
    assert client_certificates(tls(["not a pem", _pem(der)])) == [der]
    # Anything missing or odd yields no certificate, hence no trust.
    assert client_certificates({}) == []
    assert client_certificates({"extensions": None}) == []
    assert client_certificates({"extensions": {"tls": {}}}) == []
    assert client_certificates(tls(_pem(der))) == []
    assert client_certificates(tls([42])) == []


# -- stream records (the raw ALPN channel) ------------------------------------------------


@settings(deadline=None)  # no wall-clock deadline on a loaded CI machine
@given(
    records=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_records_survive_any_split_of_the_stream(records: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(FRAME_LENGTH.pack(len(r)) + r for r in records)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = RecordReader(max_size=300)
    got: list[bytes] = []
    for start, end in zip(points, points[1:], strict=False):
        got.extend(reader.feed(stream[start:end]))
    assert got == records
    assert reader.buffered == 0


def test_record_over_the_limit_is_refused_from_its_length() -> None:
    reader = RecordReader(max_size=1024)
    assert reader.feed(FRAME_LENGTH.pack(1024) + b"x" * 10) == []  # at the limit: waits
    with pytest.raises(ProtocolError, match="exceeds"):
        RecordReader(max_size=1024).feed(FRAME_LENGTH.pack(1025))  # no body needed
    with pytest.raises(ProtocolError, match="exceeds"):
        RecordReader(max_size=1 << 20).feed(b"GET / HTTP/1.1\r\n")  # HTTP is not a record


@settings(deadline=None)  # no wall-clock deadline on a loaded CI machine
@given(sender=st.integers(1, 2**64 - 1), payloads=payload_lists)
def test_encode_record_is_the_length_then_the_frame(sender: int, payloads: list[bytes]) -> None:
    frame = encode_frame(sender, payloads)
    record = encode_record(sender, payloads)
    assert record == FRAME_LENGTH.pack(len(frame)) + frame
    (got,) = RecordReader(len(frame)).feed(record)
    assert decode_frame(got) == Frame(sender=sender, payloads=tuple(payloads))
    with pytest.raises(ValidationError):
        encode_record(0, payloads)


def test_goodbye_round_trip_and_cap() -> None:
    (record,) = RecordReader(GOODBYE_MAX_SIZE).feed(encode_goodbye(GOODBYE_FORBIDDEN, "no"))
    assert decode_goodbye(record) == (GOODBYE_FORBIDDEN, "no")
    long = encode_goodbye(GOODBYE_PROTOCOL_ERROR, "é" * 1000)
    (record,) = RecordReader(GOODBYE_MAX_SIZE).feed(long)
    assert len(record) <= GOODBYE_MAX_SIZE
    code, reason = decode_goodbye(record)
    assert code == GOODBYE_PROTOCOL_ERROR and reason.startswith("éé")
    assert KEEPALIVE == FRAME_LENGTH.pack(0)
    assert RecordReader(8).feed(KEEPALIVE * 2) == [b"", b""]


def test_core_listener_offers_http_and_raft() -> None:
    assert CORE_ALPN_PROTOCOLS == ("http/1.1", RAFT_ALPN)
    assert RAFT_ALPN == "microtrio-raft/1"
