"""A tiny metrics registry: counters, gauges, histograms, Prometheus text format 0.0.4.

One :class:`MetricsRegistry` per member (the daemon owns it: ``Daemon.metrics``); no global
registry. Two ways to publish a value:

* **Instruments**, updated where the event happens (cheap, no I/O, no lock: everything runs
  on one trio thread)::

      requests = registry.counter("microtrio_api_requests_total", "Requests answered",
                                  labels=("listener", "code"))
      requests.labels(listener="core", code="200").inc()
      latency = registry.histogram("microtrio_db_write_seconds", "Write latency")
      latency.observe(0.004)
      term = registry.gauge("microtrio_raft_term", "Current Raft term")
      term.set(7)

* **Collectors**, called at scrape time, for values that already live somewhere else (the
  Raft node's status, the database's applied index). A collector returns
  :class:`Sample` objects of families it declared with :meth:`MetricsRegistry.add_collector`;
  ``add_collector`` returns a function that removes it again (call it when the component
  stops, e.g. in the ``finally`` of its ``run``)::

      def raft_samples() -> list[Sample]:
          status = node.status()
          out = [Sample("microtrio_raft_term", status.term),
                 Sample("microtrio_raft_commit_index", status.commit)]
          for peer, progress in status.progress.items():
              out.append(Sample("microtrio_raft_peer_lag_entries",
                                status.last_index - progress.match, {"peer": str(peer)}))
          return out

      remove = registry.add_collector(raft_samples, families=[
          Family("microtrio_raft_term", "gauge", "Current Raft term"),
          Family("microtrio_raft_commit_index", "gauge", "Highest committed log index"),
          Family("microtrio_raft_peer_lag_entries", "gauge", "Entries a peer is behind"),
      ])
      try:
          ...
      finally:
          remove()

Names the Raft driver and heartbeats are expected to use (so dashboards stay stable):
``microtrio_raft_term``, ``microtrio_raft_role{role}`` (1 for the current role),
``microtrio_raft_leader`` (1 when this member leads), ``microtrio_raft_commit_index``,
``microtrio_raft_applied_index``, ``microtrio_raft_log_entries``, ``microtrio_raft_log_bytes``,
``microtrio_raft_peer_lag_entries{peer}``, ``microtrio_heartbeat_age_seconds{member}``.

Values that need I/O to read (an ``await``: the Raft driver's status, the member rows) come
from **async collectors**, :meth:`MetricsRegistry.add_async_collector`: the metrics endpoint
awaits :meth:`MetricsRegistry.refresh` (each bounded by a timeout) before :meth:`render`.

Registering a name twice with the same kind and labels returns the existing instrument;
anything else is a :class:`~microtrio.ValidationError`. A collector that raises is logged
and skipped for that scrape (a metrics page must never fail because one source did).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, final

import trio

from ._errors import ValidationError

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "AsyncCollector",
    "Counter",
    "Family",
    "Gauge",
    "Histogram",
    "MetricsRegistry",
    "Sample",
]

logger = logging.getLogger("microtrio.metrics")

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Latency buckets in seconds (0.5 ms .. 10 s).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Kind = Literal["counter", "gauge", "histogram"]
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _check_name(name: str, labels: Sequence[str]) -> None:
    if not _NAME.match(name):
        raise ValidationError(f"Invalid metric name {name!r}")
    for label in labels:
        if not _LABEL.match(label) or label.startswith("__") or label == "le":
            raise ValidationError(f"Invalid label name {label!r} for metric {name!r}")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


@final
@dataclass(frozen=True, slots=True)
class Family:
    """A metric family a collector produces: name, kind (``gauge``/``counter``) and help."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str


@final
@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a collector's family, with its labels."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


ChildT = TypeVar("ChildT")


class _Metric(Generic[ChildT]):
    """One family of instruments: a child (the series' state) per label-value tuple; the
    unlabelled family has its single child from the start (so it renders as 0)."""

    kind: Kind

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], ChildT] = {}
        if not labels:
            self._children[()] = self._new_child()

    def _new_child(self) -> ChildT:  # pragma: no cover - overridden
        raise NotImplementedError

    def _key(self, values: Mapping[str, str]) -> tuple[str, ...]:
        if set(values) != set(self.label_names):
            raise ValidationError(
                f"Metric {self.name!r} takes labels {list(self.label_names)}, got {sorted(values)}"
            )
        return tuple(str(values[n]) for n in self.label_names)

    def labels(self, **values: str) -> ChildT:
        """The series of these label values (created at first use)."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _existing(self, values: Mapping[str, str]) -> ChildT | None:
        return self._children.get(self._key(values))

    def remove(self, **values: str) -> None:
        """Forget one labelled series (a peer that left)."""
        self._children.pop(self._key(values), None)

    def _series(self) -> list[tuple[list[tuple[str, str]], ChildT]]:
        """Every series, sorted, with its label pairs."""
        return [
            (list(zip(self.label_names, key, strict=True)), child)
            for key, child in sorted(self._children.items(), key=lambda item: item[0])
        ]

    def lines(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class _Value:
    """The state of one counter or gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


ValueT = TypeVar("ValueT", bound=_Value)


class _Scalar(_Metric[ValueT]):
    """A family whose series are one number each (counters and gauges)."""

    def value(self, **values: str) -> float:
        """The series' current value (0 for a series never touched)."""
        child = self._existing(values)
        return 0.0 if child is None else child.value

    def lines(self) -> list[str]:
        return [
            f"{self.name}{_labels_text(pairs)} {_number(child.value)}"
            for pairs, child in self._series()
        ]


@final
class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValidationError("A counter can only go up")
        self.value += amount


@final
class Counter(_Scalar[_CounterChild]):
    """A monotonically increasing count (``*_total``)."""

    kind: Kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


@final
class _GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


@final
class Gauge(_Scalar[_GaugeChild]):
    """A value that goes up and down."""

    kind: Kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self.labels().set(value)


@final
class _HistogramChild:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += value


@final
class Histogram(_Metric[_HistogramChild]):
    """Observations counted in cumulative ``le`` buckets, plus ``_sum`` and ``_count``."""

    kind: Kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValidationError(f"Histogram {name!r} needs distinct finite buckets")
        self.buckets = tuple(bounds)
        super().__init__(name, help_text, labels)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def count(self, **values: str) -> int:
        child = self._existing(values)
        return 0 if child is None else child.count

    def lines(self) -> list[str]:
        out: list[str] = []
        for pairs, child in self._series():
            running = 0
            for bound, n in zip(self.buckets, child.counts, strict=True):
                running += n
                le = _labels_text([*pairs, ("le", _number(bound))])
                out.append(f"{self.name}_bucket{le} {running}")
            out.append(f"{self.name}_bucket{_labels_text([*pairs, ('le', '+Inf')])} {child.count}")
            out.append(f"{self.name}_sum{_labels_text(pairs)} {_number(child.sum)}")
            out.append(f"{self.name}_count{_labels_text(pairs)} {child.count}")
        return out


MetricT = TypeVar("MetricT", bound=_Metric[Any])
Collector = Callable[[], Iterable[Sample]]
AsyncCollector = Callable[[], Awaitable[Iterable[Sample]]]


@final
class MetricsRegistry:
    """The instruments and collectors of one member; :meth:`render` is the scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric[Any]] = {}
        self._families: dict[str, Family] = {}
        self._collectors: dict[int, tuple[Collector, tuple[Family, ...]]] = {}
        self._refreshers: dict[int, tuple[AsyncCollector, list[list[Sample]]]] = {}
        self._next_id = 0

    def _claim(self, name: str) -> None:
        if name in self._metrics or name in self._families:
            raise ValidationError(f"Metric {name!r} is already registered differently")

    def _instrument(
        self, cls: type[MetricT], name: str, labels: Sequence[str], make: Callable[[], MetricT]
    ) -> MetricT:
        """The instrument ``name`` if registered the same way, else a new one (``make()``)."""
        found = self._metrics.get(name)
        if isinstance(found, cls) and found.label_names == tuple(labels):
            return found
        _check_name(name, labels)
        self._claim(name)
        metric = make()
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help_text: str, *, labels: Sequence[str] = ()) -> Counter:
        return self._instrument(Counter, name, labels, lambda: Counter(name, help_text, labels))

    def gauge(self, name: str, help_text: str, *, labels: Sequence[str] = ()) -> Gauge:
        return self._instrument(Gauge, name, labels, lambda: Gauge(name, help_text, labels))

    def histogram(
        self,
        name: str,
        help_text: str,
        *,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._instrument(
            Histogram, name, labels, lambda: Histogram(name, help_text, labels, buckets)
        )

    def add_collector(
        self, collect: Collector, *, families: Sequence[Family]
    ) -> Callable[[], None]:
        """Call ``collect()`` at every scrape; returns the function that removes it."""
        for family in families:
            _check_name(family.name, ())
            self._claim(family.name)
        for family in families:
            self._families[family.name] = family
        key = self._next_id
        self._next_id += 1
        self._collectors[key] = (collect, tuple(families))

        def remove() -> None:
            entry = self._collectors.pop(key, None)
            if entry is not None:
                for family in entry[1]:
                    self._families.pop(family.name, None)

        return remove

    def add_async_collector(
        self, collect: AsyncCollector, *, families: Sequence[Family]
    ) -> Callable[[], None]:
        """Await ``collect()`` in every :meth:`refresh`; :meth:`render` shows what the last
        refresh returned. Returns the function that removes it."""
        cell: list[list[Sample]] = [[]]
        remove_sync = self.add_collector(lambda: cell[0], families=families)
        key = self._next_id
        self._next_id += 1
        self._refreshers[key] = (collect, cell)

        def remove() -> None:
            self._refreshers.pop(key, None)
            remove_sync()

        return remove

    async def refresh(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Run every async collector (concurrently, each bounded by ``timeout`` seconds);
        one that fails or times out publishes no samples for this scrape."""

        async def one(collect: AsyncCollector, cell: list[list[Sample]]) -> None:
            samples: list[Sample] | None = None
            try:
                with trio.move_on_after(timeout):
                    samples = list(await collect())
            except Exception:  # one broken source must not take the whole page down
                logger.warning("metrics collector %r failed", collect, exc_info=True)
            else:
                if samples is None:
                    logger.warning("metrics collector %r timed out after %s s", collect, timeout)
            cell[0] = samples if samples is not None else []

        async with trio.open_nursery() as nursery:
            for collect, cell in list(self._refreshers.values()):
                nursery.start_soon(one, collect, cell)

    def names(self) -> list[str]:
        """Every registered family name (instruments and collectors)."""
        return sorted([*self._metrics, *self._families])

    def render(self) -> str:
        """The exposition text (Prometheus text format 0.0.4)."""
        blocks: dict[str, list[str]] = {}
        for name, metric in self._metrics.items():
            blocks[name] = [
                f"# HELP {name} {_escape_help(metric.help)}",
                f"# TYPE {name} {metric.kind}",
                *metric.lines(),
            ]
        for collect, families in list(self._collectors.values()):
            try:
                samples = list(collect())
            except Exception:  # one broken source must not take the whole page down
                logger.warning("metrics collector %r failed", collect, exc_info=True)
                continue
            by_name: dict[str, list[str]] = {f.name: [] for f in families}
            for sample in samples:
                if sample.name not in by_name:
                    logger.warning("metrics collector produced undeclared %r", sample.name)
                    continue
                pairs = sorted((k, str(v)) for k, v in sample.labels.items())
                by_name[sample.name].append(
                    f"{sample.name}{_labels_text(pairs)} {_number(sample.value)}"
                )
            for family in families:
                blocks[family.name] = [
                    f"# HELP {family.name} {_escape_help(family.help)}",
                    f"# TYPE {family.name} {family.kind}",
                    *by_name[family.name],
                ]
        return "".join("\n".join(blocks[n]) + "\n" for n in sorted(blocks))
