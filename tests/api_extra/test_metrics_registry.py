"""The metrics registry and its Prometheus text format 0.0.4 (pure, no I/O)."""

from __future__ import annotations

import re

import pytest

from microtrio import ValidationError
from microtrio._metrics import Family, MetricsRegistry, Sample

# One line of the exposition format: a comment, or name{labels} value.
_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
    r"(-?[0-9.e+-]+|NaN|\+Inf|-Inf)$"
)
_COMMENT = re.compile(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$")


def check_exposition(text: str) -> dict[str, str]:
    """Every line is well formed; each family has HELP then TYPE before its samples and
    appears once. Returns {family: type}."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#"):
            assert _COMMENT.match(line), line
            kind, name = line.split(" ")[1:3]
            if kind == "HELP":
                assert name not in types, f"family {name} repeated"
                current = name
            else:
                assert name == current
                types[name] = line.split(" ", 3)[3]
        else:
            assert _SAMPLE.match(line), line
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            assert name == current or name in {
                current + "_bucket",
                current + "_sum",
                current + "_count",
            }, line
    return types


def test_counter_gauge_histogram_render() -> None:
    registry = MetricsRegistry()
    requests = registry.counter("app_requests_total", "Requests", labels=("code",))
    requests.labels(code="200").inc()
    requests.labels(code="200").inc(2)
    requests.labels(code="500").inc()
    temperature = registry.gauge("app_temperature", "Degrees\nCelsius")
    temperature.set(21.5)
    latency = registry.histogram("app_latency_seconds", "Latency", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    text = registry.render()
    assert check_exposition(text) == {
        "app_latency_seconds": "histogram",
        "app_requests_total": "counter",
        "app_temperature": "gauge",
    }
    assert text == (
        "# HELP app_latency_seconds Latency\n"
        "# TYPE app_latency_seconds histogram\n"
        'app_latency_seconds_bucket{le="0.1"} 2\n'
        'app_latency_seconds_bucket{le="1"} 3\n'
        'app_latency_seconds_bucket{le="+Inf"} 4\n'
        "app_latency_seconds_sum 3.65\n"
        "app_latency_seconds_count 4\n"
        "# HELP app_requests_total Requests\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{code="200"} 3\n'
        'app_requests_total{code="500"} 1\n'
        "# HELP app_temperature Degrees\\nCelsius\n"
        "# TYPE app_temperature gauge\n"
        "app_temperature 21.5\n"
    )
    assert requests.value(code="200") == 3
    assert latency.count() == 4


def test_label_values_are_escaped() -> None:
    registry = MetricsRegistry()
    gauge = registry.gauge("x", "x", labels=("path",))
    gauge.labels(path='a"b\\c\nd').set(1)
    text = registry.render()
    check_exposition(text)
    assert 'x{path="a\\"b\\\\c\\nd"} 1' in text


def test_registration_rules() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("c_total", "c", labels=("a",))
    assert registry.counter("c_total", "again", labels=("a",)) is counter
    with pytest.raises(ValidationError):
        registry.gauge("c_total", "clash")
    with pytest.raises(ValidationError):
        registry.counter("c_total", "other labels", labels=("b",))
    with pytest.raises(ValidationError):
        registry.counter("bad-name", "x")
    with pytest.raises(ValidationError):
        registry.gauge("g", "x", labels=("le",))
    with pytest.raises(ValidationError):
        counter.labels(a="1").inc(-1)
    with pytest.raises(ValidationError):
        counter.labels(b="1")
    with pytest.raises(ValidationError):
        registry.histogram("h", "x", buckets=())


def test_collectors_are_scraped_removed_and_isolated() -> None:
    registry = MetricsRegistry()
    term = [3]
    remove = registry.add_collector(
        lambda: [
            Sample("raft_term", term[0]),
            Sample("raft_peer_lag", 5, {"peer": "2"}),
            Sample("undeclared", 1),
        ],
        families=[Family("raft_term", "gauge", "term"), Family("raft_peer_lag", "gauge", "lag")],
    )

    def broken() -> list[Sample]:
        raise RuntimeError("boom")

    registry.add_collector(broken, families=[Family("broken_value", "gauge", "never shown")])
    with pytest.raises(ValidationError):
        registry.add_collector(list, families=[Family("raft_term", "gauge", "twice")])
    text = registry.render()
    check_exposition(text)
    assert "raft_term 3\n" in text and 'raft_peer_lag{peer="2"} 5\n' in text
    assert "undeclared" not in text and "broken_value" not in text
    term[0] = 4
    assert "raft_term 4\n" in registry.render()
    remove()
    assert "raft_term" not in registry.render()
    assert "raft_term" not in registry.names()
    registry.gauge("raft_term", "a family name is free again after removal")
