"""The lifecycle every run kind shares: claim once, progress, cancellation between cases, failures recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from evals.errors import BadParameters, UnknownRunKind
from evals.models import EvalResult, EvalRun
from evals.runs import RUNNERS, Progress, RunnerSpec, cancel_run, create_run, execute_run, reap_abandoned_runs, register
from evals.tasks import run_eval
from routing.models import ProfileEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def exploding() -> Iterator[str]:
    register(RunnerSpec("exploding", "tests.evals.exploding_runner", "fails on its second case"))
    yield "exploding"
    RUNNERS.pop("exploding")


def planning_run(tmp_path: Path, **parameters: object) -> EvalRun:
    return create_run("planning", parameters={"out": str(tmp_path / "report"), **parameters}, requested_by="test")


def test_a_run_is_claimed_once_so_a_second_delivery_does_nothing(tmp_path: Path) -> None:
    run = planning_run(tmp_path)
    first = execute_run(run.pk)
    assert first.status == "succeeded" and first.started_at and first.finished_at
    results = EvalResult.objects.filter(run=run).count()
    assert results == 12
    again = run_eval(run.pk)  # the Celery task, delivered a second time
    assert again["status"] == "succeeded"
    assert EvalResult.objects.filter(run=run).count() == results
    assert EvalRun.objects.get(pk=run.pk).finished_at == first.finished_at


def test_a_queued_run_that_is_cancelled_never_starts(tmp_path: Path) -> None:
    run = planning_run(tmp_path)
    assert cancel_run(run.pk).status == "cancelled"
    assert execute_run(run.pk).status == "cancelled"
    assert not EvalResult.objects.filter(run=run).exists()
    assert not (tmp_path / "report").exists()


def test_cancelling_a_running_run_stops_it_before_the_next_case(tmp_path: Path) -> None:
    run = planning_run(tmp_path)
    seen: list[Progress] = []

    def operator_cancels_after_first_case(progress: Progress) -> None:
        seen.append(progress)
        if progress.done == 1 and progress.status == "running":
            cancel_run(run.pk)

    finished = execute_run(run.pk, listeners=[operator_cancels_after_first_case])
    assert finished.status == "cancelled"
    assert "after 1 of 12 cases" in finished.error
    assert finished.progress_done == 1 and finished.progress_total == 12
    assert EvalResult.objects.filter(run=run).count() == 1
    assert seen[-1].status == "cancelled"
    assert not (tmp_path / "report").exists()  # no report from half a bake-off
    assert not ProfileEntry.objects.exists()  # nor a profile: cancelled runs measure nothing


def test_an_exception_leaves_the_run_failed_with_the_error_and_keeps_its_results(exploding: str) -> None:
    run = create_run(exploding)
    finished = execute_run(run.pk)
    assert finished.status == "failed"
    assert finished.error == "RuntimeError: the upstream sent garbage"
    assert finished.finished_at is not None and finished.progress_done == 1
    assert list(EvalResult.objects.filter(run=run).values_list("name", flat=True)) == ["first", "second"]


def test_ctrl_c_records_the_run_cancelled_and_still_interrupts(exploding: str) -> None:
    run = create_run(exploding, parameters={"raise": "interrupt"})
    with pytest.raises(KeyboardInterrupt):
        execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.error == "interrupted (KeyboardInterrupt)"


def test_progress_is_written_at_most_every_half_second_and_listeners_see_every_case(tmp_path: Path) -> None:
    class Clock:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    still = Clock()
    run = planning_run(tmp_path)
    stored: list[int] = []
    events: list[Progress] = []

    def watch(progress: Progress) -> None:
        events.append(progress)
        stored.append(EvalRun.objects.get(pk=run.pk).progress_done)

    execute_run(run.pk, listeners=[watch], clock=still)
    running = [e for e in events if e.status == "running"]
    assert [e.done for e in running] == list(range(13))  # the total (0/12), then every case
    assert [e.persisted for e in running] == [True] + [False] * 12  # the clock stood still: no writes
    assert stored[:-1] == [0] * 13 and stored[-1] == 12  # the row caught up when the run finished

    ticking = Clock()

    def tick(progress: Progress) -> None:
        ticking.now += 0.6
        events.append(progress)

    events.clear()
    execute_run(planning_run(tmp_path).pk, listeners=[tick], clock=ticking)
    assert all(e.persisted for e in events)


def test_a_running_run_whose_lease_lapsed_is_failed_by_the_reaper_within_minutes(settings: object) -> None:
    now = timezone.now()
    lease = timedelta(seconds=settings.ANVIL_EVAL_LEASE_SECONDS)  # type: ignore[attr-defined]

    def running(beat: timedelta, lease_until: timedelta | None) -> EvalRun:
        return EvalRun.objects.create(kind="planning", status="running", started_at=now - timedelta(hours=2),
                                      heartbeat_at=now - beat, progress_done=54, progress_total=200,
                                      lease_expires_at=None if lease_until is None else now + lease_until)

    lost = running(timedelta(minutes=2) + lease, -timedelta(minutes=2))  # was reaped after 30 minutes
    lapsing = running(lease + timedelta(seconds=5), -timedelta(seconds=5))  # a redelivery may still take it
    alive = running(timedelta(0), lease)
    before_leases = running(timedelta(hours=1), None)  # a row from before leases: its last heartbeat
    assert reap_abandoned_runs(now) == 2
    for run in (lost, lapsing, alive, before_leases):
        run.refresh_from_db()
    assert lost.status == before_leases.status == "failed" and lost.finished_at == now
    assert lost.error.startswith("abandoned: the worker running it was lost (no heartbeat since ")
    assert lost.error.endswith("at 54/200 cases) and no worker took it over")
    assert lapsing.status == alive.status == "running"


def test_unknown_kinds_and_bad_parameters_are_refused_before_a_run_exists() -> None:
    with pytest.raises(UnknownRunKind, match="no runner for eval kind 'nope'"):
        create_run("nope")
    with pytest.raises(BadParameters, match="min_quality is a number from 0 to 1"):
        create_run("planning", parameters={"min_quality": 2})
    with pytest.raises(BadParameters, match="unknown planning parameter"):
        create_run("planning", parameters={"colour": "blue"})
    assert not EvalRun.objects.exists()
