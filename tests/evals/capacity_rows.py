"""A finished benchmark-shaped run for page tests: capacity levels in its summary, latencies on its results."""

from __future__ import annotations

from evals.models import EvalResult, EvalRun
from tests.evals.rows import finished_run

STATS = ("mean", "p50", "p90", "p99")


def _level(label: str, concurrency: int | None, rate: float | None, requests: int, completed: int,
           duration_s: float, request_throughput: float, output_throughput: float,
           **latencies: tuple[float, float, float, float]) -> dict[str, object]:
    """One level as evals.load_generator.summarize writes it (latencies in ms: mean, p50, p90, p99)."""
    return {"label": label, "concurrency": concurrency, "rate": rate, "requests": requests, "completed": completed,
            "failed": requests - completed, "duration_s": duration_s, "request_throughput": request_throughput,
            "output_throughput": output_throughput,
            **{metric: dict(zip(STATS, values, strict=True)) for metric, values in latencies.items()}}


LEVELS = [
    _level("c=1", 1, None, 16, 16, 9.1, 1.76, 225.3, ttft_ms=(41.0, 40.0, 52.5, 60.1), tpot_ms=(7.1, 7.0, 7.9, 8.8),
           itl_ms=(7.0, 6.9, 7.7, 9.0), e2el_ms=(560.0, 551.0, 600.0, 640.0)),
    _level("c=4", 4, None, 32, 31, 9.1, 3.5, 410.2, ttft_ms=(80.0, 75.0, 120.0, 150.0),
           tpot_ms=(9.5, 9.2, 11.0, 13.5), itl_ms=(9.4, 9.0, 10.8, 14.0), e2el_ms=(1100.0, 1050.0, 1300.0, 1500.0)),
    _level("rate=2.0/s", None, 2.0, 32, 32, 16.4, 1.95, 250.0, ttft_ms=(45.0, 44.0, 58.0, 70.0),
           tpot_ms=(7.4, 7.3, 8.1, 9.2), itl_ms=(7.3, 7.2, 8.0, 9.5), e2el_ms=(600.0, 590.0, 650.0, 700.0)),
]
LATENCIES = [0.21, 0.24, 0.25, 0.31, 0.33, 0.38, 0.41, 0.52, 0.55, 0.9]


def capacity_run() -> EvalRun:
    """A succeeded run whose summary has LEVELS and whose results (no subject: they never reach a profile)
    have LATENCIES."""
    run = finished_run(kind="benchmark")
    run.summary = {"capacity": LEVELS, "lines": ["c=4: 31/32 ok, 3.50 req/s, 410.2 tok/s"],
                   "quality": {"passed": 7, "failed": 1, "budget_exhausted": 1, "errors": 0, "answered": 9,
                               "pass_rate": 0.7778}}
    run.base_url, run.model = "http://127.0.0.1:9/v1", "bench-model"
    run.save()
    for index, latency in enumerate(LATENCIES):
        EvalResult.objects.create(run=run, name=f"request {index}", work_class="chat", verdict="pass",
                                  latency_s=latency, ttft_s=latency / 10, prompt_tokens=20, completion_tokens=64,
                                  finish_reason="length")
    return run
