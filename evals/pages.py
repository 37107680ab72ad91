"""What the console's eval pages show, read from the database in the shapes their templates draw.

Read models only: every change an operator makes goes through the domain
actions (``evals.launch``, ``evals.runs``, ``evals.review``, ``evals.profile_loop``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.utils.safestring import SafeString

from console.charts import Bin, Series, bar_chart, histogram, histogram_bins
from evals import launch
from evals.models import EvalResult, EvalRun, Grade, ProfilePromotion
from evals.profile_loop import (
    CellChange,
    CellKey,
    Insufficient,
    ProfileChangePlan,
    ProfileDiff,
    current_version,
    insufficient_cells,
    min_samples,
    profile_diff,
)
from evals.progress_feed import progress_percent
from evals.review import review_queue
from routing.models import ProfileEntry, WorkClass
from routing.staleness import changed_fields
from serves.models import Serve

RUNS_PER_PAGE = 25
RESULTS_PER_PAGE = 50
GRADES_PER_PAGE = 20
VERSIONS_SHOWN = 20  # the profile page's list; `manage.py profile versions` lists them all
HARNESS_ERRORS_SHOWN = 100

# What the benchmark runner writes into run.summary["capacity"], one entry per level.
LATENCY_METRICS = (("ttft_ms", "Time to first token"), ("tpot_ms", "Time per output token"),
                   ("itl_ms", "Inter-token latency"), ("e2el_ms", "End-to-end latency"))
LATENCY_STATS = ("mean", "p50", "p90", "p99")
CHARTED_PERCENTILES = ("p50", "p90", "p99")
SUMMARY_DRAWN_ELSEWHERE = ("lines", "capacity")
# A benchmark's quality part: shown as a table, in this order, when the summary has it.
QUALITY_FIELDS = ("answered", "passed", "failed", "budget_exhausted", "errors", "pass_rate")


# --- runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    run: EvalRun
    percent: int


def runs_page(page: str | int | None, *, kind: str = "", status: str = "") -> tuple[Page, list[RunRow]]:
    """Newest runs first, optionally of one kind or status; the page and its rows with their progress."""
    runs: QuerySet[EvalRun] = EvalRun.objects.select_related("target_serve")
    if kind:
        runs = runs.filter(kind=kind)
    if status:
        runs = runs.filter(status=status)
    found = Paginator(runs, RUNS_PER_PAGE).get_page(page)
    return found, [RunRow(run, progress_percent(run)) for run in found]


# --- one run --------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    title: str
    unit: str
    count: int
    bins: list[Bin]
    chart: SafeString


@dataclass(frozen=True)
class LatencyRow:
    label: str
    stats: tuple[float | None, ...]  # LATENCY_STATS, in order


@dataclass(frozen=True)
class LatencyBlock:
    metric: str
    title: str
    rows: list[LatencyRow]
    chart: SafeString


@dataclass(frozen=True)
class CapacityLevel:
    label: str
    concurrency: int | None
    rate: float | None
    requests: int | None
    completed: int | None
    failed: int | None
    duration_s: float | None
    request_throughput: float | None
    output_throughput: float | None
    latencies: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Capacity:
    levels: list[CapacityLevel]
    throughput_charts: list[SafeString]
    latency: list[LatencyBlock]


@dataclass(frozen=True)
class RunPage:
    run: EvalRun
    percent: int
    parameters: str
    summary_lines: list[str]
    summary_rest: str
    verdicts: list[tuple[str, int]]
    results: Page
    histograms: list[Histogram]
    capacity: Capacity | None
    quality: list[tuple[str, Any]]
    harness_errors: list[EvalResult] = field(default_factory=list)  # checks that could not run, apart
    harness_error_count: int = 0


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def _whole(raw: Any) -> int | None:
    number = _number(raw)
    return int(number) if number is not None else None


def capacity_levels(summary: dict[str, Any]) -> list[CapacityLevel]:
    """The levels of a benchmark's summary; a malformed entry is skipped, a missing number is None."""
    raw = summary.get("capacity") if isinstance(summary, dict) else None
    if not isinstance(raw, list):
        return []
    levels = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            continue
        concurrency, rate = _whole(entry.get("concurrency")), _number(entry.get("rate"))
        label = entry.get("label")
        if not isinstance(label, str) or not label:
            label = (f"c={concurrency}" if concurrency is not None
                     else f"rate={rate}/s" if rate is not None else f"level {index + 1}")
        latencies = {}
        for metric, _ in LATENCY_METRICS:
            stats = entry.get(metric)
            if isinstance(stats, dict):
                latencies[metric] = {name: _number(stats.get(name)) for name in LATENCY_STATS}
        levels.append(CapacityLevel(label, concurrency, rate, _whole(entry.get("requests")),
                                    _whole(entry.get("completed")), _whole(entry.get("failed")),
                                    _number(entry.get("duration_s")), _number(entry.get("request_throughput")),
                                    _number(entry.get("output_throughput")), latencies))
    return levels


def capacity(summary: dict[str, Any]) -> Capacity | None:
    levels = capacity_levels(summary)
    if not levels:
        return None
    labels = [level.label for level in levels]
    charts = [
        bar_chart("Output throughput per level", labels,
                  [Series("output tokens/s", tuple(level.output_throughput for level in levels))], unit="tokens/s"),
        bar_chart("Request throughput per level", labels,
                  [Series("requests/s", tuple(level.request_throughput for level in levels))], unit="requests/s"),
    ]
    blocks = []
    for metric, title in LATENCY_METRICS:
        if not any(metric in level.latencies for level in levels):
            continue
        stats = [level.latencies.get(metric, {}) for level in levels]
        series = [Series(name, tuple(one.get(name) for one in stats)) for name in CHARTED_PERCENTILES]
        rows = [LatencyRow(level.label, tuple(one.get(name) for name in LATENCY_STATS))
                for level, one in zip(levels, stats, strict=True)]
        blocks.append(LatencyBlock(metric, title, rows, bar_chart(f"{title} (p50, p90, p99)", labels, series,
                                                                    unit="ms")))
    return Capacity(levels, charts, blocks)


def _histogram(title: str, values: list[float], unit: str) -> Histogram | None:
    bins = histogram_bins(values)
    if not bins:
        return None
    return Histogram(title, unit, len(values), bins, histogram(title, bins, unit=unit))


def run_page(run: EvalRun, results_page: str | int | None) -> RunPage:
    summary = run.summary if isinstance(run.summary, dict) else {}
    lines = summary.get("lines")
    results = EvalResult.objects.filter(run=run).select_related("case").order_by("pk")
    timings = list(results.values_list("latency_s", "ttft_s"))
    histograms = [found for found in (
        _histogram("Latency of its results", [t[0] for t in timings if t[0] is not None], "s"),
        _histogram("Time to first token of its results", [t[1] for t in timings if t[1] is not None], "s"),
    ) if found is not None]
    verdicts = Counter(results.values_list("verdict", flat=True))
    harness = results.filter(verdict=EvalResult.Verdict.HARNESS_ERROR)
    return RunPage(
        run=run, percent=progress_percent(run),
        parameters=json.dumps(run.parameters, indent=2, sort_keys=True),
        summary_lines=[str(line) for line in lines] if isinstance(lines, list) else [],
        summary_rest=json.dumps({k: v for k, v in summary.items() if k not in SUMMARY_DRAWN_ELSEWHERE},
                                indent=2, sort_keys=True, default=str),
        verdicts=sorted((verdict, count) for verdict, count in verdicts.items()
                        if verdict != EvalResult.Verdict.HARNESS_ERROR),
        results=Paginator(results, RESULTS_PER_PAGE).get_page(results_page),
        histograms=histograms,
        capacity=capacity(summary),
        quality=quality_rows(summary),
        harness_errors=list(harness[:HARNESS_ERRORS_SHOWN]),
        harness_error_count=verdicts.get(EvalResult.Verdict.HARNESS_ERROR, 0),
    )


def quality_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """A benchmark's quality tally as (name, value) rows; empty when the summary has none."""
    found = summary.get("quality")
    if not isinstance(found, dict):
        return []
    return [(name.replace("_", " "), found[name]) for name in QUALITY_FIELDS if name in found]


# --- the review queue -------------------------------------------------------------
def review_page(page: str | int | None, source: str = "") -> Page:
    """Pending automatic grades, oldest first, optionally from one source (verifier or judge)."""
    queue = review_queue().select_related("result__case", "judge_serve")
    if source:
        queue = queue.filter(source=source)
    return Paginator(queue, GRADES_PER_PAGE).get_page(page)


def review_counts() -> dict[str, int]:
    counts = dict.fromkeys((Grade.Source.VERIFIER, Grade.Source.JUDGE), 0)
    for source in review_queue().values_list("source", flat=True):
        counts[source] = counts.get(source, 0) + 1
    return counts


# --- the profile: candidate beside live ---------------------------------------------
@dataclass(frozen=True)
class MatrixCell:
    change: CellChange | None  # None where neither profile has the cell
    insufficient: Insufficient | None = None  # the grades speak for it, too few to count (candidate side)


@dataclass(frozen=True)
class MatrixRow:
    kind: str
    subject: str
    cells: list[MatrixCell]  # one per work class


@dataclass(frozen=True)
class StaleCell:
    profile: str
    work_class: str
    decision: str
    reason: str


@dataclass(frozen=True)
class StaleServe:
    serve: Serve
    cells: list[StaleCell]
    pending: EvalRun | None


@dataclass(frozen=True)
class ProfilePage:
    diff: ProfileDiff
    work_classes: list[str]
    rows: list[MatrixRow]
    changes: list[CellChange]
    counts: dict[str, int]
    stale: list[StaleServe]
    last_promotion: ProfilePromotion | None
    reeval_kind: str
    insufficient: list[Insufficient] = field(default_factory=list)
    min_samples: int = 0
    versions: list[VersionRow] = field(default_factory=list)


@dataclass(frozen=True)
class VersionRow:
    version: ProfilePromotion
    live: bool  # its rows are the live profile now


def matrix_rows(diff: ProfileDiff, work_classes: list[str],
                insufficient: dict[CellKey, Insufficient] | None = None) -> list[MatrixRow]:
    """Subjects (serves, then tiers, by name) by work class, each cell the change from live to candidate,
    and, where the candidate has no row, the cells with too few samples for a verdict."""
    insufficient = insufficient or {}
    by_subject: dict[tuple[str, str], dict[str, CellChange]] = {}
    for change in diff.changes:
        by_subject.setdefault((change.kind, change.subject), {})[change.work_class] = change
    for kind, subject, _ in insufficient:
        by_subject.setdefault((kind, subject), {})
    rows = []
    for (kind, subject), cells in sorted(by_subject.items()):
        row = []
        for work_class in work_classes:
            change = cells.get(work_class)
            thin = insufficient.get((kind, subject, work_class))
            row.append(MatrixCell(change, thin if change is None or change.candidate is None else None))
        rows.append(MatrixRow(kind, subject, row))
    return rows


def stale_serves() -> list[StaleServe]:
    """Serves with a profile cell that no longer describes them (marked stale, or their identity changed)."""
    serves = {serve.name: serve for serve in Serve.objects.order_by("name")}
    found: dict[str, list[StaleCell]] = {}
    entries = ProfileEntry.objects.filter(kind=ProfileEntry.Kind.SERVE, subject__in=list(serves))\
        .order_by("subject", "profile", "work_class")
    for entry in entries:
        serve = serves[entry.subject]
        if entry.stale:
            reason = entry.stale_reason or "marked stale"
        elif entry.fingerprint and entry.fingerprint != serve.fingerprint():
            changes = changed_fields(entry.identity, serve.identity()) if entry.identity else []
            reason = "identity changed: " + "; ".join(changes) if changes else "identity fingerprint changed"
        else:
            continue
        found.setdefault(entry.subject, []).append(StaleCell(entry.profile, entry.work_class, entry.decision, reason))
    pending: dict[str, EvalRun] = {}
    for run in EvalRun.objects.filter(kind=launch.REEVAL_KIND, target_name__in=list(found),
                                      status__in=(EvalRun.Status.QUEUED, EvalRun.Status.RUNNING))\
            .order_by("created_at", "pk"):
        pending[run.target_name] = run  # the newest wins
    return [StaleServe(serves[name], cells, pending.get(name)) for name, cells in sorted(found.items())]


def profile_page() -> ProfilePage:
    diff = profile_diff()
    work_classes = list(WorkClass.values)
    thin = insufficient_cells()
    versions = list(ProfilePromotion.objects.select_related("restored_from")[:VERSIONS_SHOWN])
    live = current_version(versions)
    return ProfilePage(
        diff=diff, work_classes=work_classes, rows=matrix_rows(diff, work_classes, thin),
        changes=[change for change in diff.changes if change.status != "unchanged"], counts=diff.counts(),
        stale=stale_serves(), last_promotion=next((v for v in versions if v.action != v.Action.KEPT), None),
        reeval_kind=launch.REEVAL_KIND, insufficient=[thin[key] for key in sorted(thin)], min_samples=min_samples(),
        versions=[VersionRow(version, live is not None and version.pk == live.pk) for version in versions],
    )


@dataclass(frozen=True)
class ConfirmPage:
    """What a promotion or a revert would change, to confirm: the changed cells and the warnings by name."""

    plan: ProfileChangePlan
    changes: list[CellChange]
    counts: dict[str, int]
    stale_token: bool  # the diff changed since the page the operator came from was drawn


def confirm_page(plan: ProfileChangePlan, seen_token: str = "") -> ConfirmPage:
    return ConfirmPage(plan, [c for c in plan.diff.changes if c.status != "unchanged"], plan.diff.counts(),
                       bool(seen_token) and seen_token != plan.diff.token)

