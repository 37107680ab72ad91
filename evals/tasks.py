"""Celery tasks for eval runs: thin wrappers over evals.runs (ids in, dicts out).

Schedules: an operator adds a django-celery-beat PeriodicTask in the admin for
``evals.scheduled_run`` with kwargs such as ``{"kind": "preflight", "serve": "fast"}``.
No schedule is registered by default: the two offline kinds (planning,
bootstrap) give the same answer until their committed data changes, so running
them on a clock measures nothing new.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from evals.live import ProgressPublisher
from evals.runs import create_run, execute_run, reap_abandoned_runs
from evals.targets import resolve_target

# A benchmark sweeps concurrency levels and request rates against a real
# serve: hours, not the default task limit. The soft limit raises inside the
# runner, which records the run as failed instead of leaving it running.
EVAL_TIME_LIMIT = 4 * 3600


def _result(run: Any) -> dict[str, object]:
    return {"run": run.pk, "kind": run.kind, "status": run.status, "gate_passed": run.gate_passed,
            "error": run.error}


@shared_task(name="evals.run_eval", time_limit=EVAL_TIME_LIMIT, soft_time_limit=EVAL_TIME_LIMIT - 60)
def run_eval(run_id: int) -> dict[str, object]:
    """Run a queued run; a run that is not queued any more (run already, cancelled) is left alone.

    Its progress is published to the console's pages as it is written (evals.live)."""
    return _result(execute_run(run_id, listeners=[ProgressPublisher()]))


@shared_task(name="evals.scheduled_run", time_limit=EVAL_TIME_LIMIT, soft_time_limit=EVAL_TIME_LIMIT - 60)
def scheduled_run(kind: str, serve: str = "", base_url: str = "", model: str = "",
                  parameters: dict[str, Any] | None = None) -> dict[str, object]:
    """What a beat schedule calls: make a run of ``kind`` (against ``serve`` if given) and run it here."""
    target = resolve_target(serve=serve or None, base_url=base_url or None, model=model or None) \
        if (serve or base_url) else None
    run = create_run(kind, target=target, parameters=parameters, requested_by="schedule")
    return _result(execute_run(run.pk, listeners=[ProgressPublisher()]))


@shared_task(name="evals.reap_abandoned_runs", time_limit=120, soft_time_limit=90)
def reap_abandoned() -> int:
    return reap_abandoned_runs()
