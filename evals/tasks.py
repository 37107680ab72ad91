"""Celery tasks for eval runs: thin wrappers over evals.runs (ids in, dicts out).

Schedules: an operator adds a django-celery-beat PeriodicTask in the admin for
``evals.scheduled_run`` with kwargs such as ``{"kind": "preflight", "serve": "fast"}``.
No schedule is registered by default: the two offline kinds (planning,
bootstrap) give the same answer until their committed data changes, so running
them on a clock measures nothing new.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from celery import Task, shared_task
from django.db import transaction

from anvil_site.task_queue import send
from evals.calibration import LOCK_SECONDS, drain_samples
from evals.models import EvalRun
from evals.progress_feed import ProgressPublisher
from evals.runs import execute_run, reap_abandoned_runs, run_for_task
from evals.targets import resolve_target

# A benchmark sweeps concurrency levels and request rates against a real
# serve: hours, not the default task limit. The soft limit raises inside the
# runner, which records the run as failed instead of leaving it running.
EVAL_TIME_LIMIT = 4 * 3600
# A pool process killed mid-run (SIGKILL, out of memory) must not lose its run:
# the message is acknowledged only when the task returns, and requeued when the
# process running it dies; the redelivery takes the run over (evals/runs.py).
# The app's settings say the same today; an eval run must not depend on that.
REDELIVER_IF_WORKER_LOST = {"acks_late": True, "reject_on_worker_lost": True}


def enqueue_run(run_id: int) -> str:
    """Hand a queued run to a Celery worker once the current transaction commits; returns the task id."""
    task_id = uuid.uuid4().hex
    EvalRun.objects.filter(pk=run_id).update(celery_task_id=task_id)
    transaction.on_commit(lambda: send(run_eval, (run_id,), task_id=task_id))
    return task_id


def _result(run: Any) -> dict[str, object]:
    return {"run": run.pk, "kind": run.kind, "status": run.status, "gate_passed": run.gate_passed,
            "error": run.error}


@shared_task(name="evals.run_eval", time_limit=EVAL_TIME_LIMIT, soft_time_limit=EVAL_TIME_LIMIT - 60,
             **REDELIVER_IF_WORKER_LOST)
def run_eval(run_id: int) -> dict[str, object]:
    """Run a queued run, or take over one whose worker died; a finished or cancelled run is left alone.

    Its progress is published to the console's pages as it is written (evals.progress_feed)."""
    return _result(execute_run(run_id, listeners=[ProgressPublisher()]))


@shared_task(bind=True, name="evals.scheduled_run", time_limit=EVAL_TIME_LIMIT, soft_time_limit=EVAL_TIME_LIMIT - 60,
             **REDELIVER_IF_WORKER_LOST)
def scheduled_run(self: Task, kind: str, serve: str = "", base_url: str = "", model: str = "",
                  parameters: dict[str, Any] | None = None) -> dict[str, object]:
    """What a beat schedule calls: make a run of ``kind`` (against ``serve`` if given) and run it here.

    A redelivery of the same task finds the run it made and takes it over."""
    target = resolve_target(serve=serve or None, base_url=base_url or None, model=model or None) \
        if (serve or base_url) else None
    run = run_for_task(self.request.id, kind, target=target, parameters=parameters, requested_by="schedule")
    return _result(execute_run(run.pk, listeners=[ProgressPublisher()]))


@shared_task(name="evals.reap_abandoned_runs", time_limit=120, soft_time_limit=90)
def reap_abandoned() -> int:
    return reap_abandoned_runs()


# Beat runs it every 10 s (a queued one expires after 9); a lock in Redis keeps it to one at a time, and
# the soft limit stops a drain (slow judges) before that lock lapses: the next drain takes the rest.
@shared_task(name="evals.drain_calibration", time_limit=LOCK_SECONDS, soft_time_limit=LOCK_SECONDS - 60)
def drain_calibration() -> dict[str, object]:
    """Send waiting live-calibration samples to their judges; the grades wait in the review queue."""
    return asdict(drain_samples())
