"""Eval rows for tests: finished runs with graded results, made directly in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evals.models import EvalResult, EvalRun, Grade

BASE_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def finished_run(kind: str = "preflight", status: str = "succeeded", minute: int = 0) -> EvalRun:
    """A run that ended ``minute`` minutes after BASE_TIME (later runs are newer measurements)."""
    at = BASE_TIME + timedelta(minutes=minute)
    return EvalRun.objects.create(kind=kind, status=status, started_at=at, finished_at=at)


def graded_result(run: EvalRun, subject: str, score: float, *, work_class: str = "chat", samples: int = 1,
                  source: str = "verifier", review: str = "pending", subject_kind: str = "serve",
                  fingerprint: str = "", identity: dict[str, object] | None = None) -> EvalResult:
    result = EvalResult.objects.create(run=run, name=f"{subject} case", subject=subject, subject_kind=subject_kind,
                                       work_class=work_class, samples=samples, verdict="graded", score=score,
                                       fingerprint=fingerprint, identity=identity or {})
    Grade.objects.create(result=result, source=source, score=score, review_status=review)
    return result
