"""The traffic pages' data: the decisions browser's filters, one decision as readable rows, and the charts over a
window (one query each, over the decision log's time index).

Percentiles are computed here from one query's values (SQLite has no percentile aggregate); the rows are
capped at the newest ``CHART_ROWS_CAP`` of the window.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django.utils.safestring import SafeString

from console.charts import Series, bar_chart, line_chart
from inference.models import ApiKey
from routing.models import DecisionRecord

WINDOWS = {"1h": dt.timedelta(hours=1), "6h": dt.timedelta(hours=6), "24h": dt.timedelta(hours=24)}
BUCKETS = 30  # points per line
CHART_ROWS_CAP = 50_000
TOP_SERVES = 5  # lines on the requests chart: the busiest
OUTCOMES = ("served", "error", "client-gone")


@dataclass(frozen=True)
class Filters:
    serve: str = ""
    work_class: str = ""
    key: str = ""
    outcome: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def apply(self, found: QuerySet[DecisionRecord]) -> QuerySet[DecisionRecord]:
        if self.serve:
            found = found.filter(served_by=self.serve)
        if self.work_class:
            found = found.filter(work_class=self.work_class)
        if self.key:
            key = ApiKey.objects.filter(name=self.key).first()
            found = found.filter(key_id=key.pk if key else -1)
        if self.outcome == "error":
            found = found.filter(Q(outcome="error") | Q(status__gte=400))
        elif self.outcome:
            found = found.filter(outcome=self.outcome)
        if self.start:
            found = found.filter(created_at__gte=self.start)
        if self.end:
            found = found.filter(created_at__lt=self.end)
        return found


def decisions(filters: Filters) -> QuerySet[DecisionRecord]:
    return filters.apply(DecisionRecord.objects.order_by("-created_at"))


def choices() -> dict[str, list[str]]:
    """What the filters offer: the serves, work classes and keys seen in the last day, and the outcomes."""
    recent = DecisionRecord.objects.filter(created_at__gte=timezone.now() - dt.timedelta(days=1))
    return {"serves": sorted(s for s in recent.values_list("served_by", flat=True).distinct() if s),
            "work_classes": sorted(w for w in recent.values_list("work_class", flat=True).distinct() if w),
            "keys": list(ApiKey.objects.order_by("name").values_list("name", flat=True)),
            "outcomes": list(OUTCOMES)}


def attempt_rows(record: DecisionRecord) -> list[dict[str, Any]]:
    """Each attempt as a row: serve, outcome, status, time, commit rule, verification, queue wait, load on demand."""
    rows = []
    for attempt in record.attempts or []:
        rows.append({"serve": attempt.get("serve", ""), "outcome": attempt.get("outcome", ""),
                     "status": attempt.get("status"), "ms": attempt.get("ms"), "commit": attempt.get("commit", ""),
                     "verify": ", ".join(attempt.get("verify") or []), "detail": attempt.get("detail", ""),
                     "queued_ms": attempt.get("queued_ms"), "queue_depth": attempt.get("queue_depth"),
                     "loaded_on_demand": bool(attempt.get("loaded_on_demand"))})
    return rows


def candidate_rows(record: DecisionRecord) -> list[dict[str, Any]]:
    return [{"serve": c.get("serve", ""), "verdict": c.get("verdict", ""), "why": c.get("why", "")}
            for c in record.candidates or []]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def charts(window: str, now: dt.datetime | None = None) -> list[SafeString]:
    """Requests per minute by serve; fallback and error rates; TTFT and latency p50/p99; tokens by key."""
    now = now or timezone.now()
    span = WINDOWS.get(window, WINDOWS["1h"])
    start = now - span
    size = span / BUCKETS
    window_rows = DecisionRecord.objects.filter(created_at__gte=start, created_at__lt=now)

    def bucket(at: dt.datetime) -> int:
        return min(int((at - start) / size), BUCKETS - 1)

    labels = [(start + size * i).astimezone(dt.UTC).strftime("%H:%M") for i in range(BUCKETS)]
    per_minute = size.total_seconds() / 60

    # 1. Requests per minute by serve (one query: counts per minute and serve).
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0] * BUCKETS)
    for row in (window_rows.exclude(served_by="").annotate(minute=TruncMinute("created_at"))
                .values("minute", "served_by").annotate(n=Count("id"))):
        counts[row["served_by"]][bucket(row["minute"])] += row["n"] / per_minute
    busiest = sorted(counts, key=lambda serve: -sum(counts[serve]))[:TOP_SERVES]
    requests = line_chart(f"Requests per minute by serve (last {window})", labels,
                          [Series(serve, tuple(round(v, 2) for v in counts[serve])) for serve in busiest],
                          unit="req/min")

    # 2. and 3. Rates and timings (one query: the window's rows, newest first, capped).
    totals, errors, fallbacks = [0] * BUCKETS, [0] * BUCKETS, [0] * BUCKETS
    ttfts: list[list[float]] = [[] for _ in range(BUCKETS)]
    latencies: list[list[float]] = [[] for _ in range(BUCKETS)]
    for at, status, outcome, fell_back, ttft, latency in (
            window_rows.order_by("-created_at").values_list("created_at", "status", "outcome", "fell_back",
                                                            "ttft_ms", "latency_ms")[:CHART_ROWS_CAP]):
        index = bucket(at)
        totals[index] += 1
        errors[index] += outcome == "error" or (status or 0) >= 400
        fallbacks[index] += bool(fell_back)
        if ttft is not None:
            ttfts[index].append(ttft)
        if latency is not None:
            latencies[index].append(latency)

    def rate(part: list[int]) -> tuple[float | None, ...]:
        return tuple(round(100 * p / t, 1) if t else None for p, t in zip(part, totals, strict=True))

    rates = line_chart(f"Fallback and error rates (last {window})", labels,
                       [Series("errors", rate(errors)), Series("fallbacks", rate(fallbacks))], unit="%")
    timings = line_chart(f"TTFT and latency (last {window})", labels, [
        Series("TTFT p50", tuple(_percentile(v, 50) for v in ttfts)),
        Series("TTFT p99", tuple(_percentile(v, 99) for v in ttfts)),
        Series("latency p50", tuple(_percentile(v, 50) for v in latencies)),
        Series("latency p99", tuple(_percentile(v, 99) for v in latencies))], unit="ms")

    # 4. Tokens by key (one query).
    names = dict(ApiKey.objects.values_list("pk", "name"))
    per_key = window_rows.values("key_id").annotate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    used = sorted(((names.get(row["key_id"], "(none)"), (row["p"] or 0) + (row["c"] or 0)) for row in per_key),
                  key=lambda pair: -pair[1])[:8]
    tokens = bar_chart(f"Tokens by key (last {window})", [name for name, _ in used],
                       [Series("tokens", tuple(float(n) for _, n in used))], unit="tokens")
    return [requests, rates, timings, tokens]
