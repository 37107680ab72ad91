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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
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


# Per serve, per process: what the front door relayed (the dashboard's requests, errors and TTFT by serve).
# A request no serve answered counts under serve="" with its outcome.
SERVE_REQUESTS = Counter("anvil_serve_requests_total", "Front-door requests, by the serve that answered and outcome.",
                         ["serve", "outcome"])
SERVE_TTFT = Histogram("anvil_serve_ttft_seconds", "Time from a request's arrival to its first byte, by serve.",
                       ["serve"], buckets=LATENCY_BUCKETS)

# The pool (docs/pool.md). Per process: how long requests waited in a serve's queue. Shared (read from
# Redis at scrape time, the same in every web process): requests in flight and waiting per serve, loads
# and drains (they happen in Celery workers).
QUEUE_WAIT = Histogram("anvil_queue_wait_seconds", "Time a request waited in a serve's queue (a load included).",
                       ["serve"], buckets=LATENCY_BUCKETS)


class PoolCollector(Collector):
    """The shared pool figures, refreshed by ``metrics_app`` before each scrape."""

    def __init__(self) -> None:
        self.serves: dict[str, tuple[int, int]] = {}  # serve -> (in flight, waiting)
        self.events: dict[str, dict[tuple[str, str], tuple[int, float]]] = {}

    def collect(self) -> Iterator[Any]:
        inflight = GaugeMetricFamily("anvil_serve_inflight", "Requests in flight at a serve (every web process).",
                                     labels=["serve"])
        depth = GaugeMetricFamily("anvil_serve_queue_depth", "Requests waiting in a serve's queue.", labels=["serve"])
        for serve, (flying, waiting) in sorted(self.serves.items()):
            inflight.add_metric([serve], flying)
            depth.add_metric([serve], waiting)
        yield inflight
        yield depth
        loads = CounterMetricFamily("anvil_loads", "Model loads that ended, by outcome.", labels=["serve", "outcome"])
        load_seconds = SummaryMetricFamily("anvil_load_seconds", "Time from a load's start to ready (or failed).",
                                           labels=["serve", "outcome"])
        drains = SummaryMetricFamily("anvil_drain_seconds", "Time an unload waited for requests in flight.",
                                     labels=["serve", "outcome"])
        for (serve, outcome), (count, seconds) in sorted(self.events.get("load", {}).items()):
            loads.add_metric([serve, outcome], count)
            load_seconds.add_metric([serve, outcome], count, seconds)
        for (serve, outcome), (count, seconds) in sorted(self.events.get("drain", {}).items()):
            drains.add_metric([serve, outcome], count, seconds)
        swaps = CounterMetricFamily("anvil_swaps", "Loads that evicted another model to make room.", labels=["serve"])
        swap_seconds = SummaryMetricFamily("anvil_swap_seconds", "Time from a swap's start (eviction, drain "
                                           "included) to the new model ready.", labels=["serve"])
        for (serve, _outcome), (count, seconds) in sorted(self.events.get("swap", {}).items()):
            swaps.add_metric([serve], count)
            swap_seconds.add_metric([serve], count, seconds)
        yield from (loads, load_seconds, drains, swaps, swap_seconds)


POOL = PoolCollector()
REGISTRY.register(POOL)

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
    from routing.decision_log import DECISION_LOG  # these need Django's apps: imported once they are ready
    from serves.pool_stats import read_pool_figures

    DECISIONS_DROPPED.values = await DECISION_LOG.dropped_totals()
    POOL.serves, POOL.events = await read_pool_figures()
    body = generate_latest()
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
