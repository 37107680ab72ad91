"""An eval run survives a killed worker: leases, heartbeats, takeover by the redelivered task, and the reaper.

Real processes throughout: a Celery worker whose pool process is SIGKILLed mid-run, a ``runeval``
process killed at a terminal (no redelivery), a scripted upstream that answers slowly. The lease
is a few seconds here (``ANVIL_EVAL_LEASE_SECONDS``), 45 in production.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.utils import timezone

from anvil_site.celery import app
from evals.models import EvalResult, EvalRun
from evals.runs import MAX_ATTEMPTS, claim_run, create_run, execute_run, reap_abandoned_runs
from evals.targets import resolve_target
from evals.tasks import enqueue_run, run_eval
from serves.models import Serve
from tests.support.celery_worker import celery_worker
from tests.support.live import scripted_upstream
from tests.support.processes import child_env, manage, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 4.0  # seconds: a heartbeat every two thirds of a second
# Two capacity levels of six requests, about 0.6 s each (10 chunks 60 ms apart): the first level's
# results are written when it ends, and the second level runs for a few seconds after that.
TWO_LEVELS = {"concurrency": [2, 1], "requests": 6, "parts": ["capacity"]}


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch, settings: Any) -> float:
    """The lease for the processes the test starts (their environment) and for this one (its settings)."""
    monkeypatch.setenv("ANVIL_EVAL_LEASE_SECONDS", str(LEASE))
    settings.ANVIL_EVAL_LEASE_SECONDS = LEASE
    return LEASE


@pytest.fixture
def slow_serve(logs_dir: Path) -> Iterator[str]:
    with scripted_upstream(logs_dir, deltas=10, delay_ms=60) as url:
        Serve.objects.create(name="slow", tier="fast", engine="vllm", base_url=f"{url}/v1", served_model="m")
        yield url


def finished(run_id: int) -> EvalRun | None:
    run = EvalRun.objects.get(pk=run_id)
    return run if run.is_finished else None


def pool_process_running(task_id: str) -> psutil.Process:
    """The Celery pool process (the worker's child) that is running ``task_id``, as the worker reports it."""
    for tasks in (app.control.inspect(timeout=1.0).active() or {}).values():
        for task in tasks:
            if task["id"] == task_id:
                return psutil.Process(task["worker_pid"])
    raise AssertionError(f"no worker reports task {task_id} active")


@pytest.mark.slow
def test_a_run_whose_pool_process_is_killed_is_taken_over_by_the_redelivery_and_succeeds(
        short_lease: float, slow_serve: str, logs_dir: Path) -> None:
    run = create_run("benchmark", target=resolve_target(serve="slow"), parameters=TWO_LEVELS)
    with celery_worker(logs_dir):
        enqueue_run(run.pk)
        run.refresh_from_db()
        wait_for(lambda: EvalResult.objects.filter(run=run).count() == 6, 60, "the first level's results")
        pool = wait_for(lambda: pool_process_running(run.celery_task_id), 10, "the pool process running the run")
        assert pool.parent() is not None and "celery" in " ".join(pool.parent().cmdline())  # the worker's child
        pool.send_signal(signal.SIGKILL)
        pool.wait(timeout=10)
        assert EvalRun.objects.get(pk=run.pk).status == EvalRun.Status.RUNNING  # killed mid-run
        done = wait_for(lambda: finished(run.pk), 4 * short_lease + 60,
                        "the redelivered task to take the run over and finish it")
        # The same task, delivered again, ran it to the end: the worker is left with nothing in hand.
        wait_for(lambda: not any((app.control.inspect(timeout=1.0).active() or {"w": [None]}).values()), 30,
                 "the worker to finish the redelivered task")
    assert done is not None
    assert done.status == EvalRun.Status.SUCCEEDED, (done.error, done.summary)
    assert done.attempt == 2 and done.gate_passed is True
    [recovery] = done.summary["recovered"]
    assert recovery["attempt"] == 2 and "no heartbeat since" in recovery["lost"]
    assert any(line.startswith("recovered: the worker running attempt 1 was lost") for line in done.summary["lines"])
    assert [level["label"] for level in done.summary["capacity"]] == ["c=2", "c=1"]
    # Restarted from the beginning: the dead attempt's six rows were dropped, not counted twice.
    assert EvalResult.objects.filter(run=run).count() == 12
    assert EvalResult.objects.filter(run=run, name__startswith="c=2 #").count() == 6


@pytest.mark.slow
def test_a_second_delivery_while_the_worker_lives_leaves_the_run_to_it(
        short_lease: float, slow_serve: str, logs_dir: Path) -> None:
    argv = manage("runeval", "benchmark", "--serve", "slow", "--concurrency", "2", "--concurrency", "1",
                  "--requests", "6", "--part", "capacity", "--no-progress")
    with running(argv, child_env(), logs_dir / "runeval.log") as holder:
        run = wait_for(lambda: EvalRun.objects.filter(status=EvalRun.Status.RUNNING).first(), 60, "the run to start")
        again = execute_run(run.pk)  # what a duplicate delivery of its task does
        assert (again.status, again.attempt) == (EvalRun.Status.RUNNING, 1)  # left to the live worker
        assert holder.wait(timeout=60) == 0, (logs_dir / "runeval.log").read_text()[-2000:]
    run.refresh_from_db()
    assert (run.status, run.attempt) == (EvalRun.Status.SUCCEEDED, 1) and "recovered" not in run.summary
    assert EvalResult.objects.filter(run=run).count() == 12


@pytest.mark.slow
def test_a_run_whose_worker_died_with_no_redelivery_is_failed_by_the_reaper_within_two_leases(
        short_lease: float, slow_serve: str, logs_dir: Path) -> None:
    argv = manage("runeval", "benchmark", "--serve", "slow", "--concurrency", "1", "--requests", "50",
                  "--part", "capacity", "--no-progress")
    with running(argv, child_env(), logs_dir / "runeval.log") as holder:
        run = wait_for(lambda: EvalRun.objects.filter(status=EvalRun.Status.RUNNING, progress_done__gte=1).first(),
                       60, "the run to make progress")
        assert reap_abandoned_runs() == 0  # its worker lives: its lease is renewed
        holder.send_signal(signal.SIGKILL)  # a terminal's runeval: nothing redelivers it
        holder.wait(timeout=10)
        killed = timezone.now()
        wait_for(lambda: reap_abandoned_runs() == 1, 2 * short_lease + 30, "the reaper to fail the run", interval=0.5)
    run.refresh_from_db()
    assert run.status == EvalRun.Status.FAILED and run.finished_at is not None
    assert run.error.startswith("abandoned: the worker running it was lost (no heartbeat since ")
    assert run.error.endswith("cases) and no worker took it over")
    # One lease for the lease to lapse, one more for a redelivery to claim it first; then it is failed.
    assert run.finished_at - killed < timedelta(seconds=2 * short_lease + 20)


def lost_run(*, lapsed_for: float, **fields: object) -> EvalRun:
    """A running run whose worker stopped renewing its lease ``lapsed_for`` seconds ago."""
    now = timezone.now()
    lapsed = now - timedelta(seconds=lapsed_for)
    values: dict[str, object] = {
        "kind": "planning", "status": EvalRun.Status.RUNNING, "attempt": 1, "started_at": now - timedelta(minutes=5),
        "heartbeat_at": lapsed - timedelta(seconds=LEASE), "lease_expires_at": lapsed, "progress_done": 54,
        "progress_total": 200}
    values.update(fields)
    return EvalRun.objects.create(**values)


def test_a_cancelled_run_whose_worker_died_is_recorded_cancelled_never_resumed(short_lease: float) -> None:
    run = lost_run(lapsed_for=1, cancel_requested=True)
    answer = run_eval(run.pk)  # the redelivered task
    run.refresh_from_db()
    assert answer["status"] == run.status == EvalRun.Status.CANCELLED
    assert run.attempt == 1 and run.error.startswith("cancelled; the worker running it was lost")
    assert not EvalResult.objects.filter(run=run).exists()


def test_a_run_that_loses_its_worker_every_time_is_failed_not_redelivered_forever(short_lease: float) -> None:
    run = lost_run(lapsed_for=1, attempt=MAX_ATTEMPTS)
    assert claim_run(run.pk) is None
    run.refresh_from_db()
    assert run.status == EvalRun.Status.FAILED and run.attempt == MAX_ATTEMPTS
    assert f"lost {MAX_ATTEMPTS} times" in run.error and "out of memory" in run.error

