"""runeval benchmark against real serves: the capacity metrics vllm bench serve defines, the quality
floor, a blank answer cut off by max_tokens recorded as budget exhausted, and cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evals.models import EvalResult, EvalRun, Grade
from evals.runs import cancel_run, create_run, execute_run
from evals.targets import resolve_target
from evals.tasks import enqueue_run
from serves.models import Serve
from tests.support.celery_worker import celery_worker
from tests.support.live import scripted_upstream
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def diligent(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, deltas=8, delay_ms=5, force_scenario="diligent") as url:
        yield url


def serve_at(url: str, name: str = "up") -> Serve:
    return Serve.objects.create(name=name, tier="fast", engine="vllm", base_url=f"{url}/v1", served_model="m")


def test_capacity_levels_and_the_quality_floor(diligent: str) -> None:
    serve_at(diligent)
    run = execute_run(create_run("benchmark", target=resolve_target(serve="up"), parameters={
        "concurrency": [1, 4], "rates": [40.0], "requests": 8, "repeats": 2}).pk)
    assert run.status == EvalRun.Status.SUCCEEDED and run.gate_passed is True, run.summary
    levels = {level["label"]: level for level in run.summary["capacity"]}
    assert list(levels) == ["c=1", "c=4", "rate=40/s"]
    for level in levels.values():
        assert level["completed"] == 8 and level["failed"] == 0
        assert level["output_tokens"] == 8 * 8  # the upstream's reported usage: 8 tokens per answer
        assert level["output_throughput"] == pytest.approx(level["output_tokens"] / level["duration_s"], rel=1e-3)
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            spread = level[metric]
            assert 0 < spread["p50"] <= spread["p90"] <= spread["p99"], (metric, spread)
        # 8 chunks 5 ms apart: inter-token gaps near 5 ms, each request longer than its first token.
        assert 3 <= level["itl_ms"]["p50"] <= 50 and level["e2el_ms"]["p50"] > level["ttft_ms"]["p50"]
    assert run.summary["quality"]["pass_rate"] == 1.0 and run.summary["quality"]["answered"] == 6
    assert EvalResult.objects.filter(run=run, name__startswith="c=4 #").count() == 8
    assert Grade.objects.filter(result__run=run).count() == 6  # quality answers only; capacity rows are not grades


def test_a_blank_answer_cut_off_by_max_tokens_is_budget_exhausted_not_wrong(module_logs: Path) -> None:
    with scripted_upstream(module_logs, force_scenario="exhausted") as url:
        serve_at(url, "thinker")
        run = execute_run(create_run("benchmark", target=resolve_target(serve="thinker"),
                                     parameters={"parts": ["quality"], "repeats": 1}).pk)
    quality = run.summary["quality"]
    assert quality["budget_exhausted"] == 3 and quality["failed"] == 0 and quality["answered"] == 0
    assert run.gate_passed is False  # nothing answered: nothing shows the floor is met
    assert set(EvalResult.objects.filter(run=run).values_list("verdict", flat=True)) == {"budget-exhausted"}
    assert not Grade.objects.filter(result__run=run).exists()  # no wrong answers reach the profile


def test_a_cancelled_run_stops_and_its_requests_stop(module_logs: Path) -> None:
    with scripted_upstream(module_logs, deltas=40, delay_ms=25) as slow:  # about a second per request
        serve_at(slow, "slow")
        run = create_run("benchmark", target=resolve_target(serve="slow"), parameters={
            "concurrency": [2], "requests": 200, "parts": ["capacity"]})
        with celery_worker(module_logs):
            enqueue_run(run.pk)
            wait_for(lambda: EvalRun.objects.get(pk=run.pk).progress_done >= 2, 60, "the benchmark to make progress")
            cancel_run(run.pk)
            wait_for(lambda: EvalRun.objects.get(pk=run.pk).status == EvalRun.Status.CANCELLED, 20,
                     "the run to stop")
            sent = len(httpx.get(f"{slow}/_requests", timeout=5).json())
            stopped = EvalRun.objects.get(pk=run.pk)
            assert sent < 20, sent  # nowhere near the 200 it would have sent
            assert "cancelled" in stopped.error and stopped.finished_at is not None
