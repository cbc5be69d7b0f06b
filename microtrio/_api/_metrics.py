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
* ``microtrio_listener_info{listener,address}`` for every running listener.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

from quart import Request, Response

from .._db._status import DatabaseStatus
from .._metrics import CONTENT_TYPE, Family, MetricsRegistry, Sample
from ._openapi import RoutesGetter, openapi_resources, responds_with
from ._resources import Endpoint, EndpointAction, Resources
from ._state import State

__all__ = [
    "METRICS_PATH",
    "RequestMetrics",
    "install_member_metrics",
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


def install_member_metrics(
    registry: MetricsRegistry, state: State, listeners: Callable[[], Mapping[str, str]]
) -> RequestMetrics:
    """Register the member, database and listener families; return the request metrics
    the router observes into."""
    registry.add_collector(lambda: _member_samples(state, listeners), families=_MEMBER_FAMILIES)
    return RequestMetrics(registry)


def metrics_resources(registry: MetricsRegistry) -> Resources:
    """``core/1.0/metrics`` serving ``registry``."""

    @responds_with(CONTENT_TYPE)
    async def metrics(state: State, req: Request) -> Any:
        """This member's metrics in Prometheus text format 0.0.4"""
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
