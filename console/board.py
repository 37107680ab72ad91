"""The models board: a row per serve, as the console's home page shows it and its websocket pushes it.

Each row is the admin API's view of the serve (``serves.operations.describe``: state, runtime, capabilities,
in flight, queue, last error) with what an operator watching needs besides: its GPU and the device's ledger,
whether it is the last loaded serve of its model (unloading it turns the model's requests away), and the
last 15 minutes of its traffic per minute (requests, p50 TTFT) from the decision log, for sparklines.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from routing.models import DecisionRecord
from serves.drain_counts import in_flight
from serves.hosts import live_hosts
from serves.models import ModelState, Runtime, Serve, ServeEvent
from serves.operations import describe, queue_occupancy
from serves.residency import footprint, ledgers
from serves.runtimes import runtime_for

WINDOW_MINUTES = 15
TRAFFIC_ROWS_CAP = 20_000  # the newest rows of the window: a sparkline, not an audit


def board() -> dict[str, Any]:
    """Every serve's row, and every known device's ledger."""
    serves = list(Serve.objects.order_by("tier", "name"))
    queues = queue_occupancy([serve.name for serve in serves])
    traffic = traffic_by_minute()
    loaded_per_model: dict[str, int] = defaultdict(int)
    for serve in serves:
        if serve.enabled and serve.current_model_state == ModelState.LOADED:
            loaded_per_model[serve.public_model] += 1
    devices = {ledger.device.name: ledger.as_dict() for ledger in ledgers()}
    alive = live_host_names({serve.host for serve in serves if serve.host})
    rows = []
    for serve in serves:
        row = describe(serve, in_flight(serve.name), queues.get(serve.name, (0, 0, None)))
        device = devices.get(serve.gpu)
        if serve.host and serve.host not in alive:  # what the front door sees: nothing drives it (serves/hosts.py)
            row["state"], row["host_silent"] = "unknown", True
        row.update(
            enabled=serve.enabled, gpu=serve.gpu or None, footprint_gb=footprint(serve),
            device={"capacity_gb": device["capacity_gb"], "used_gb": device["used_gb"]} if device else None,
            last_replica=(serve.current_model_state == ModelState.LOADED
                          and loaded_per_model[serve.public_model] == 1),
            traffic=traffic.get(serve.name, empty_traffic()),
        )
        rows.append(row)
    return {"models": rows, "devices": list(devices.values()), "at": timezone.now().isoformat()}


def live_host_names(names: set[str]) -> set[str]:
    """Which of ``names`` beat now (all of them when Redis cannot tell)."""
    if not names:
        return set()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        return live_hosts(client, names)
    except redis.RedisError:
        return set(names)  # cannot tell: shown as they were
    finally:
        client.close()


def empty_traffic() -> dict[str, list[Any]]:
    return {"requests": [0] * WINDOW_MINUTES, "ttft_p50_ms": [None] * WINDOW_MINUTES}


def traffic_by_minute(now: dt.datetime | None = None) -> dict[str, dict[str, list[Any]]]:
    """Per serve, requests per minute and p50 TTFT per minute over the last WINDOW_MINUTES (oldest first)."""
    now = now or timezone.now()
    start = (now - dt.timedelta(minutes=WINDOW_MINUTES - 1)).replace(second=0, microsecond=0)
    rows = (DecisionRecord.objects.filter(created_at__gte=start).exclude(served_by="")
            .order_by("-created_at").values_list("served_by", "created_at", "ttft_ms")[:TRAFFIC_ROWS_CAP])
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * WINDOW_MINUTES)
    ttfts: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(WINDOW_MINUTES)])
    for serve, at, ttft in rows:
        minute = int((at - start).total_seconds() // 60)
        if 0 <= minute < WINDOW_MINUTES:
            counts[serve][minute] += 1
            if ttft is not None:
                ttfts[serve][minute].append(ttft)
    return {serve: {"requests": counts[serve],
                    "ttft_p50_ms": [round(statistics.median(values), 1) if values else None
                                    for values in ttfts[serve]]}
            for serve in counts}


LOG_TAIL_BYTES = 6000
TIMELINE_EVENTS = 20


def detail(name: str) -> dict[str, Any] | None:
    """An open row's extras: the engine's log tail (process and compose runtimes) and the serve's timeline of
    state events (loads, unloads, evictions, swaps, ttl and scale-out), newest first."""
    serve = Serve.objects.filter(name=name).first()
    if serve is None:
        return None
    log = ""
    if serve.run_by != Runtime.REMOTE:
        try:
            log = runtime_for(serve).log_tail(serve)[-LOG_TAIL_BYTES:]
        except OSError:
            log = ""
    events = [{"at": event.started_at.isoformat(), "action": event.action, "by": event.requested_by,
               "before": event.state_before, "after": event.state_after, "outcome": event.outcome,
               "detail": event.detail[:300]}
              for event in ServeEvent.objects.filter(serve=serve).order_by("-started_at")[:TIMELINE_EVENTS]]
    return {"serve": name, "log": log, "events": events}
