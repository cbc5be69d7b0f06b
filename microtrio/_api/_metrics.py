"""``GET /core/1.0/metrics``: the member's metrics in Prometheus text format 0.0.4.

Access: trusted callers only: the control socket, or mutual TLS with a certificate in the
truststore (``curl --unix-socket $STATE_DIR/control.socket http://x/core/1.0/metrics``). It
answers before initialisation too (the database families are then absent or zero).

What is published today (the registry is :mod:`microtrio._metrics`; the Raft driver and the
heartbeats add their own families there, see its docstring):

* ``microtrio_api_requests_total{listener,endpoint,method,code}`` and
  ``microtrio_api_request_duration_seconds{listener,endpoint,method}`` (histogram), observed
  by the router for every request on every listener;
* ``microtrio_member_info{name,address,version}``, ``microtrio_member_ready``;
* ``microtrio_database_status{status}`` (1 for the current status text),
  ``microtrio_db_applied_index``, ``microtrio_db_commits_total``,
  ``microtrio_db_transactions_total``, ``microtrio_db_queued_transactions``;
* ``microtrio_listener_info{listener,address}`` for every running listener;
* ``microtrio_heartbeat_age_seconds{member}``: per member row, seconds since its last
  heartbeat by the injected wall clock (a stale local read at scrape time; members never
  heartbeated are left out);
* the Raft families of :mod:`microtrio._replication._metrics` (term, role, commit and applied
  index, log size, per-peer lag), registered by the daemon;
* ``microtrio_db_commit_seconds`` (a write batch: replicate and apply) and
  ``microtrio_db_read_barrier_seconds`` (a linearizable read's wait for the read index),
  histograms observed by :func:`instrument_committer` around the database's committer; the
  daemon builds its database with ``committer_factory=instrument_committer(self.metrics,
  factory)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, final

import trio
from quart import Request, Response

from .._cluster._members import list_members, parse_time
from .._db._status import DatabaseStatus
from .._errors import MicrotrioError
from .._metrics import CONTENT_TYPE, Family, MetricsRegistry, Sample
from ._openapi import RoutesGetter, openapi_resources, responds_with
from ._resources import Endpoint, EndpointAction, Resources
from ._state import State

if TYPE_CHECKING:
    from .._db import Applier, Committer
    from .._db._committer import RemoteHandler

__all__ = [
    "METRICS_PATH",
    "RequestMetrics",
    "install_member_metrics",
    "instrument_committer",
    "metrics_resources",
    "observability_resources",
]

METRICS_PATH = "/core/1.0/metrics"

_MEMBER_FAMILIES = (
    Family("microtrio_member_info", "gauge", "This member's identity (value is always 1)"),
    Family("microtrio_member_ready", "gauge", "1 once the daemon is ready, 0 otherwise"),
    Family("microtrio_database_status", "gauge", "1 for the database's current status text"),
    Family("microtrio_db_applied_index", "gauge", "Highest log index applied to the database"),
    Family("microtrio_db_commits_total", "counter", "Write batches committed (group commits)"),
    Family("microtrio_db_transactions_total", "counter", "Client write transactions run"),
    Family("microtrio_db_queued_transactions", "gauge", "Write transactions waiting"),
    Family("microtrio_listener_info", "gauge", "A running listener and its bound address"),
)


@final
class RequestMetrics:
    """What the router observes for each request (one instance per member)."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self.registry = registry
        self._count = registry.counter(
            "microtrio_api_requests_total",
            "REST requests answered",
            labels=("listener", "endpoint", "method", "code"),
        )
        self._latency = registry.histogram(
            "microtrio_api_request_duration_seconds",
            "Time to answer a REST request",
            labels=("listener", "endpoint", "method"),
        )

    def observe(self, listener: str, endpoint: str, method: str, code: int, seconds: float) -> None:
        self._count.labels(
            listener=listener, endpoint=endpoint, method=method, code=str(code)
        ).inc()
        self._latency.labels(listener=listener, endpoint=endpoint, method=method).observe(seconds)


def _member_samples(state: State, listeners: Callable[[], Mapping[str, str]]) -> list[Sample]:
    status = state.database_status
    out = [
        Sample(
            "microtrio_member_info",
            1,
            {"name": state.name, "address": state.address, "version": state.version},
        ),
        Sample("microtrio_member_ready", 1 if state.ready else 0),
    ]
    out += [
        Sample("microtrio_database_status", 1 if s is status else 0, {"status": str(s)})
        for s in DatabaseStatus
    ]
    if status is DatabaseStatus.ONLINE:
        stats = state.database.statistics()
        out += [
            Sample("microtrio_db_applied_index", stats.applied_index),
            Sample("microtrio_db_commits_total", stats.commits),
            Sample("microtrio_db_transactions_total", stats.transactions),
            Sample("microtrio_db_queued_transactions", stats.queued),
        ]
    out += [
        Sample("microtrio_listener_info", 1, {"listener": key, "address": address})
        for key, address in sorted(listeners().items())
    ]
    return out


_HEARTBEAT_FAMILIES = (
    Family(
        "microtrio_heartbeat_age_seconds",
        "gauge",
        "Seconds since a member's last heartbeat (from the member rows)",
    ),
)


async def _heartbeat_samples(state: State) -> list[Sample]:
    if state.database_status is not DatabaseStatus.ONLINE:
        return []
    try:
        rows = await state.database.read(list_members, stale=True)
    except MicrotrioError:  # closed between the check and the read
        return []
    now = state.now()
    out = []
    for row in rows:
        last = parse_time(row.heartbeat)
        if last is not None:
            age = max(0.0, (now - last).total_seconds())
            out.append(Sample("microtrio_heartbeat_age_seconds", age, {"member": row.name}))
    return out


def install_member_metrics(
    registry: MetricsRegistry, state: State, listeners: Callable[[], Mapping[str, str]]
) -> RequestMetrics:
    """Register the member, database and listener families; return the request metrics
    the router observes into."""
    registry.add_collector(lambda: _member_samples(state, listeners), families=_MEMBER_FAMILIES)
    registry.add_async_collector(
        lambda: _heartbeat_samples(state), families=_HEARTBEAT_FAMILIES
    )
    return RequestMetrics(registry)


@final
class _InstrumentedCommitter:
    """A :class:`~microtrio._db.Committer` that times the one it wraps (successes only:
    a failed commit's duration says nothing about the write path)."""

    def __init__(self, inner: Committer, registry: MetricsRegistry) -> None:
        self._inner = inner
        self._commit = registry.histogram(
            "microtrio_db_commit_seconds", "Time to replicate and apply one write batch"
        )
        self._barrier = registry.histogram(
            "microtrio_db_read_barrier_seconds", "Time a linearizable read waits for its index"
        )

    async def commit(self, payload: bytes) -> int:
        start = trio.current_time()
        index = await self._inner.commit(payload)
        self._commit.observe(trio.current_time() - start)
        return index

    async def read_barrier(self) -> None:
        start = trio.current_time()
        await self._inner.read_barrier()
        self._barrier.observe(trio.current_time() - start)

    async def execute_remote(self, request: bytes) -> bytes | None:
        return await self._inner.execute_remote(request)

    def serve_remote(self, handler: RemoteHandler) -> None:
        self._inner.serve_remote(handler)


def instrument_committer(
    registry: MetricsRegistry, factory: Callable[[Applier], Committer]
) -> Callable[[Applier], Committer]:
    """Wrap a ``committer_factory`` so that commits and read barriers are timed."""

    def make(applier: Applier) -> Committer:
        return _InstrumentedCommitter(factory(applier), registry)

    return make


def metrics_resources(registry: MetricsRegistry) -> Resources:
    """``core/1.0/metrics`` serving ``registry``."""

    @responds_with(CONTENT_TYPE)
    async def metrics(state: State, req: Request) -> Any:
        """This member's metrics in Prometheus text format 0.0.4"""
        await registry.refresh()
        return Response(registry.render(), status=200, content_type=CONTENT_TYPE)

    return Resources(
        "core/1.0",
        [
            Endpoint(
                "metrics", name="metrics", get=EndpointAction(metrics), allowed_before_init=True
            )
        ],
    )


def observability_resources(registry: MetricsRegistry, routes: RoutesGetter) -> list[Resources]:
    """The metrics and OpenAPI endpoints of one listener (``routes``: its route table)."""
    return [metrics_resources(registry), openapi_resources(routes)]
