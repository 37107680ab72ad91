"""Prometheus metrics: request counts and latencies by route and status.

``MetricsMiddleware`` wraps the whole ASGI application, so the front door and
Django pages are measured the same way. Routes are labelled by the dispatcher
(``scope["anvil.route"]``), never by raw path, so label cardinality is bounded.
Each process exposes its own numbers at ``/metrics``, except
``anvil_decisions_dropped_total``: decision records dropped anywhere (most by the
drain, in a Celery worker nobody scrapes), read from Redis at scrape time, so every
web process reports the same shared total.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Streams last minutes: the top buckets cover long generations.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("anvil_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
LATENCY = Histogram(
    "anvil_http_request_duration_seconds",
    "Time from request start to the last byte of the response.",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)


class SharedCounter(Collector):
    """A counter kept elsewhere (Redis), refreshed by ``metrics_app`` before each scrape."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.values.items()):
            family.add_metric([value], count)
        yield family


DECISIONS_DROPPED = SharedCounter("anvil_decisions_dropped",
                                  "Decision records dropped (by every process) instead of being written.", "reason")
REGISTRY.register(DECISIONS_DROPPED)


class MetricsMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = "500"  # what it was if the app dies before starting a response

        async def measured_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            route = scope.get("anvil.route", "unmatched")
            REQUESTS.labels(route, scope.get("method", ""), status).inc()
            LATENCY.labels(route, status).observe(time.perf_counter() - started)


async def metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET /metrics in the Prometheus text format."""
    from routing.decision_log import DECISION_LOG  # needs Django's apps: imported once they are ready

    DECISIONS_DROPPED.values = await DECISION_LOG.dropped_totals()
    body = generate_latest()
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
