"""A run's page: parameters, summary, gate, error, paged results, a latency histogram and throughput charts."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from django.test import Client

from evals.models import EvalResult, EvalRun
from evals.pages import RESULTS_PER_PAGE
from evals.runs import create_run, execute_run
from tests.evals.capacity_rows import LATENCIES, LEVELS, capacity_run
from tests.evals.console import operator_client, text

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops() -> Client:
    return operator_client()


def page_of(ops: Client, run: EvalRun, query: str = "") -> str:
    answer = ops.get(f"/console/evals/runs/{run.pk}/{query}")
    assert answer.status_code == 200
    return html.unescape(text(answer))  # the JSON on it, quotes and all


def section(page: str, anchor: str) -> str:
    found = re.search(rf'<section class="card" id="{anchor}">.*?</section>', page, re.S)
    assert found, f"no #{anchor} section"
    return found.group(0)


def bars(svg: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'data-(\w+)="([^"]*)"', rect)) for rect in re.findall(r'<rect class="bar"[^>]*>', svg)]


def test_a_planning_run_shows_parameters_summary_gate_and_results(ops: Client, tmp_path: Path) -> None:
    run = execute_run(create_run("planning", parameters={"out": str(tmp_path), "min_quality": 0.9}).pk)
    page = page_of(ops, run)
    assert f'"out": "{tmp_path}"' in page and '"min_quality": 0.9' in page
    assert "1. claude: 0.9739" in section(page, "summary")
    assert '<span class="gate failed">failed</span>' in page  # fast and heavy are under 0.9
    # The status says so too: never a green "succeeded" beside a failed gate.
    assert run.status == "gate_failed"
    assert '<span class="status gate_failed" data-field="status">gate failed</span>' in page
    assert 'class="status succeeded"' not in page
    results = section(page, "results")
    assert results.count("<tr data-result=") == 12
    assert "postgres-cutover / claude" in results and "graded: 12" in results
    assert "No result of this run recorded a latency" in section(page, "latency")
    assert 'id="capacity"' not in page  # no capacity levels in a planning summary
    assert "evals/progress.js" not in page  # a finished run has nothing to watch


def test_a_failed_run_shows_its_error(ops: Client) -> None:
    run = EvalRun.objects.create(kind="preflight", status="failed", error="fast does not answer (hint: start it)")
    assert "fast does not answer (hint: start it)" in section(page_of(ops, run), "error")


def test_an_unfinished_run_page_listens_for_its_progress(ops: Client) -> None:
    run = EvalRun.objects.create(kind="planning", status="running", progress_done=6, progress_total=12)
    page = page_of(ops, run)
    assert f'data-run="{run.pk}"' in page and "data-redraw-on-finish" in page
    assert "not yet: the run is running" in page
    assert 'aria-valuenow="50"' in page and "evals/progress.js" in page
    assert f"/console/evals/runs/{run.pk}/cancel/" in page


def test_results_are_paged(ops: Client) -> None:
    run = EvalRun.objects.create(kind="planning", status="succeeded")
    EvalResult.objects.bulk_create([EvalResult(run=run, name=f"case {i:03}", work_class="chat", verdict="pass")
                                    for i in range(RESULTS_PER_PAGE + 5)])
    first, second = section(page_of(ops, run), "results"), section(page_of(ops, run, "?page=2"), "results")
    assert first.count("<tr data-result=") == RESULTS_PER_PAGE and "case 000" in first
    assert second.count("<tr data-result=") == 5 and f"case {RESULTS_PER_PAGE + 4:03}" in second
    assert "page 2 of 2" in second


def test_throughput_charts_and_their_numbers(ops: Client) -> None:
    page = page_of(ops, capacity_run())
    capacity = section(page, "capacity")
    output, requests = re.findall(r"<svg.*?</svg>", re.search(r'id="throughput-charts">(.*?)</div>', capacity,
                                                                re.S).group(1), re.S)  # type: ignore[union-attr]
    assert "Output throughput per level" in output and "Request throughput per level" in requests
    labels = [level["label"] for level in LEVELS]
    assert [(b["category"], float(b["value"])) for b in bars(output)] == [
        (level["label"], level["output_throughput"]) for level in LEVELS]
    assert [(b["category"], float(b["value"])) for b in bars(requests)] == [
        (level["label"], level["request_throughput"]) for level in LEVELS]
    table = re.search(r'id="throughput-table">.*?</table>', capacity, re.S).group(0)  # type: ignore[union-attr]
    table = re.sub(r">\s+<", "><", table)
    for label in labels:
        assert f"<td>{label}</td>" in table
    assert "<td>410.2</td>" in table and "<td>3.50</td>" in table and "<td>16.4</td>" in table
    assert "<td>c=4</td><td>4</td><td>—</td><td>32</td><td>31</td><td>1</td>" in table  # requests, completed, failed

    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        chart = re.search(rf'<figure data-metric="{metric}">(.*?)</figure>', capacity, re.S).group(1)  # type: ignore
        drawn = {(b["category"], b["series"]): float(b["value"]) for b in bars(chart)}
        assert drawn == {(level["label"], p): level[metric][p] for level in LEVELS for p in ("p50", "p90", "p99")}
        numbers = re.search(rf'<table class="grid numbers" data-metric="{metric}">.*?</table>', capacity,
                            re.S).group(0)  # type: ignore[union-attr]
        assert numbers.count("<tr><td>") == len(LEVELS)
    assert "<td>c=4</td><td>80.0</td><td>75.0</td><td>120.0</td><td>150.0</td>" in capacity  # TTFT mean, p50, p90, p99


def test_a_benchmarks_quality_tally(ops: Client) -> None:
    quality = section(page_of(ops, capacity_run()), "quality")
    assert "<td>budget exhausted</td><td>1</td>" in quality and "<td>pass rate</td><td>78%</td>" in quality


def test_a_latency_histogram_of_the_results(ops: Client) -> None:
    latency = section(page_of(ops, capacity_run()), "latency")
    charts = re.findall(r"<svg.*?</svg>", latency, re.S)
    assert len(charts) == 2  # end-to-end latency and time to first token
    counted = bars(charts[0])
    assert sum(int(b["value"]) for b in counted) == len(LATENCIES)
    assert float(counted[0]["low"]) <= min(LATENCIES) and float(counted[-1]["high"]) >= max(LATENCIES)
    assert f"{len(LATENCIES)} results: the numbers" in latency


def test_a_malformed_capacity_summary_draws_what_it_can(ops: Client) -> None:
    run = EvalRun.objects.create(kind="benchmark", status="succeeded", summary={"capacity": [
        "garbage", {"concurrency": 8, "output_throughput": "fast", "request_throughput": 2.5},
        {"rate": 4.0, "ttft_ms": {"p50": 12.0}}]})
    capacity = section(page_of(ops, run), "capacity")
    assert "<td>c=8</td>" in capacity and "<td>rate=4.0/s</td>" in capacity
    assert "n/a" in capacity  # a level without a number is marked, not drawn as zero


def test_a_missing_run_is_404(ops: Client) -> None:
    assert ops.get("/console/evals/runs/999999/").status_code == 404


def test_harness_errors_are_shown_apart_from_failures(ops: Client) -> None:
    run = EvalRun.objects.create(kind="preflight", status="gate_failed", gate_passed=False)
    EvalResult.objects.create(run=run, name="coding smoke test", subject="s", work_class="bounded-edit",
                              verdict="fail", score=0.0)
    for depth in (10, 50, 90):
        EvalResult.objects.create(run=run, name=f"needle 2000 tokens @ {depth}%", subject="s",
                                  work_class="long-context", verdict="harness_error",
                                  error="a needle prompt of 2000 tokens does not fit the context of 512 tokens")
    page = page_of(ops, run)
    harness = section(page, "harness-errors")
    assert harness.count("<tr data-harness-error=") == 3 and "does not fit the context of 512 tokens" in harness
    assert "not graded, not in the gate" in harness
    counts = re.search(r'<p class="muted" id="verdict-counts">(.*?)</p>', page, re.S).group(1)  # type: ignore[union-attr]
    assert counts.startswith("fail: 1") and "could not run (harness errors): 3" in counts
    assert section(page, "results").count('data-verdict="harness_error"') == 3
