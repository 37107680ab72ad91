"""The lifecycle every kind of eval run shares: create, claim, run case by case, cancel, finish.

A run is a row first (``create_run``), then work: ``execute_run(run_id)`` claims
it with a conditional UPDATE (queued -> running), so a Celery task delivered
twice, or a command and a task racing, run it once.

The worker that claimed a run holds a lease on it (``lease_expires_at``,
``ANVIL_EVAL_LEASE_SECONDS``), renewed by every progress write and, while a case
takes long, by a heartbeat thread. A lease that lapses means its worker is gone
(SIGKILL, out of memory). Celery requeues the task of a pool process that died
(``acks_late`` + ``reject_on_worker_lost``); that delivery waits for the lease to
lapse, takes the run over with a conditional UPDATE (two deliveries never run it
at once), and restarts it from the beginning: the dead attempt's results are
dropped, and the summary notes the recovery. Restart, not resume: runners build
their summaries (a report, tallies, a level's percentiles) from the cases they
ran, so a resumed run would summarise half of them. Every write of the run's own
row is fenced by ``attempt``: a worker that lost its lease stops before its next
case instead of writing over its successor. The reaper fails a running run
whose lease lapsed and that nobody took over. A cancelled run is never taken
over: it is recorded cancelled. The runner for the run's
kind does the work through a ``RunContext``: it records results and grades as it
goes, reports progress (written to the row at most every
``PROGRESS_WRITE_INTERVAL``; every change is handed to the listeners, e.g. a
terminal progress bar or a websocket group), and between cases checks whether an
operator asked it to stop. Whatever happens, the run ends succeeded,
gate_failed (it ran all its cases and its gate failed), failed (with the error)
or cancelled; it is never left running by an exception, and its status is
written once, with its gate and summary, so no page ever sees it finished
in a state it does not end in. A run that ran to its end (succeeded or
gate_failed) updates the candidate quality profile in the same transaction (the
profile loop counts those runs only).

Runners are looked up by kind and imported lazily (the web process never pays
for a runner it does not start). A runner module provides::

    def execute(ctx: RunContext) -> RunOutcome           # required
    def clean_parameters(parameters: dict) -> dict        # optional: refuse bad input before a run exists
    def add_arguments(parser: CommandParser) -> None      # optional: its `runeval KIND` options
    def parameters_from_options(options: dict) -> dict    # optional: those options as run parameters
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from evals.errors import BadParameters, BadTarget, EvalError, RunCancelled, RunStateError, UnknownRunKind
from evals.models import EvalCase, EvalResult, EvalRun, Grade
from evals.targets import Target, target_from_run_fields
from routing.models import ProfileEntry
from serves.models import Serve

log = logging.getLogger(__name__)
T = TypeVar("T")
Status = EvalRun.Status

# Progress rows are read by pages that poll and by websocket listeners; twice a
# second is live enough, and a fast runner (thousands of cases a second) must
# not turn every case into a database write.
PROGRESS_WRITE_INTERVAL = 0.5
# The lease is renewed this many times within its length: a few missed beats (a
# slow database write) do not lose it, and a dead worker is noticed within one lease.
HEARTBEATS_PER_LEASE = 6
# A run that kills its worker every time (it runs it out of memory) is failed after
# this many claims, not redelivered forever.
MAX_ATTEMPTS = 3


def lease_seconds() -> float:
    """How long a claim holds a run without a heartbeat (``ANVIL_EVAL_LEASE_SECONDS``)."""
    return float(settings.ANVIL_EVAL_LEASE_SECONDS)


class RunLost(Exception):
    """The worker's lease on its run lapsed and the run was taken over or reaped: stop, write nothing more.

    Outside ``EvalError`` for the reason ``RunCancelled`` is: a runner that records a failed case
    on ``EvalError`` must not swallow it.
    """


# --- the registry of runners, by kind ----------------------------------------
@dataclass(frozen=True)
class RunnerSpec:
    kind: str
    module: str
    help: str
    needs_target: bool = False


RUNNERS: dict[str, RunnerSpec] = {}


def register(spec: RunnerSpec) -> RunnerSpec:
    """Make ``spec.kind`` runnable (by the command, the Celery task, the console)."""
    RUNNERS[spec.kind] = spec
    return spec


register(RunnerSpec("planning", "evals.runners.planning",
                    "offline, deterministic structural grading of the committed planning bake-off"))
register(RunnerSpec("bootstrap", "evals.runners.bootstrap",
                    "replay the committed eval fixtures into the candidate quality profile"))
register(RunnerSpec("preflight", "evals.runners.preflight",
                    "the correctness gate: needle in a haystack, tool calls, structured JSON, coding",
                    needs_target=True))
register(RunnerSpec("benchmark", "evals.runners.benchmark",
                    "capacity (TTFT, TPOT, ITL, latency, throughput) and quality with a pass-rate floor",
                    needs_target=True))
register(RunnerSpec("judge", "evals.runners.judge",
                    "a judge serve grades another run's answers on a rubric (grades wait for review)"))


def runner_spec(kind: str) -> RunnerSpec:
    spec = RUNNERS.get(kind)
    if spec is None:
        raise UnknownRunKind(f"no runner for eval kind {kind!r}", hint=f"known kinds: {', '.join(sorted(RUNNERS))}")
    return spec


def runner_module(kind: str) -> ModuleType:
    return importlib.import_module(runner_spec(kind).module)


# --- what runners hand back, and what listeners see ---------------------------
@dataclass
class RunOutcome:
    summary: dict[str, Any] = field(default_factory=dict)
    gate_passed: bool | None = None  # None: the run has no gate
    updates_profile: bool = True  # False: results that must not reach the quality profile


@dataclass(frozen=True)
class Progress:
    run_id: int
    kind: str
    status: str
    done: int
    total: int
    note: str
    persisted: bool  # written to the row now (listeners that publish may publish only these)
    gate_passed: bool | None = None  # the run's gate once it finished (None: no gate, or not finished)


ProgressListener = Callable[[Progress], None]


# --- creating, queueing, cancelling --------------------------------------------
def create_run(kind: str, *, target: Target | None = None, parameters: dict[str, Any] | None = None,
               requested_by: str = "") -> EvalRun:
    """A queued run; its parameters are checked by the runner now, not when a worker picks it up."""
    spec = runner_spec(kind)
    if spec.needs_target and target is None:
        raise BadTarget(f"a {kind} run needs a target: --serve NAME, or --base-url URL with --model M")
    module = importlib.import_module(spec.module)
    if parameters is not None and not isinstance(parameters, dict):
        raise BadParameters("parameters must be a JSON object")
    parameters = dict(parameters or {})
    clean = getattr(module, "clean_parameters", None)
    if clean is not None:
        parameters = clean(parameters)
    return EvalRun.objects.create(
        kind=kind, parameters=parameters, requested_by=requested_by[:150],
        target_serve_id=target.serve_id if target else None, target_name=target.serve_name if target else "",
        base_url=target.base_url if target else "", model=target.model if target else "",
    )


def run_for_task(task_id: str | None, kind: str, *, target: Target | None = None,
                 parameters: dict[str, Any] | None = None, requested_by: str = "") -> EvalRun:
    """The run a scheduled task makes: made on the task's first delivery, found again on a redelivery.

    A redelivery (its worker died mid-run) then takes that run over instead of starting a second one
    beside it.
    """
    if task_id:
        made = EvalRun.objects.filter(celery_task_id=task_id).first()
        if made is not None:
            return made
    run = create_run(kind, target=target, parameters=parameters, requested_by=requested_by)
    if task_id:
        EvalRun.objects.filter(pk=run.pk).update(celery_task_id=task_id)
    return run


def rerun(run_id: int, requested_by: str) -> EvalRun:
    """A new queued run with the same kind, target and parameters as ``run_id``."""
    old = EvalRun.objects.get(pk=run_id)
    return EvalRun.objects.create(kind=old.kind, parameters=old.parameters, target_serve_id=old.target_serve_id,
                                  target_name=old.target_name, base_url=old.base_url, model=old.model,
                                  requested_by=requested_by[:150])


def cancel_run(run_id: int) -> EvalRun:
    """Stop a run: a queued one is cancelled at once; a running one stops before its next case.

    A finished run is left as it is. Safe to call any number of times.
    """
    now = timezone.now()
    EvalRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now, error="cancelled before it started")
    EvalRun.objects.filter(pk=run_id, status=Status.RUNNING).update(cancel_requested=True)
    return EvalRun.objects.get(pk=run_id)


def reap_abandoned_runs(now: datetime | None = None) -> int:
    """Fail running runs whose worker died and that no redelivery took over; returns how many.

    A lapsed lease gets one more lease's time for a redelivery of its task to take the run over
    first (a redelivery claims within a second of the lapse). What is left had no redelivery: the
    whole worker was killed, or the run came from ``runeval`` at a terminal. A run an operator had
    asked to stop is recorded cancelled instead.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=lease_seconds())
    reaped = 0
    for run in EvalRun.objects.filter(_lapsed(cutoff), status=Status.RUNNING):
        lost = _lost_at(run)
        if run.cancel_requested:
            status, error = Status.CANCELLED, f"cancelled; the worker running it was lost ({lost})"
        else:
            status, error = Status.FAILED, (f"abandoned: the worker running it was lost ({lost}) "
                                            "and no worker took it over")
        reaped += EvalRun.objects.filter(_lapsed(cutoff), pk=run.pk, status=Status.RUNNING,
                                         attempt=run.attempt).update(status=status, finished_at=now,
                                                                     progress_note="", error=error)
    return reaped


def _lapsed(at: datetime) -> Q:
    """Running rows whose lease had lapsed at ``at`` (a row from before leases: its last heartbeat)."""
    legacy = at - timedelta(seconds=lease_seconds())
    return (Q(lease_expires_at__lt=at) | Q(lease_expires_at__isnull=True, heartbeat_at__lt=legacy)
            | Q(lease_expires_at__isnull=True, heartbeat_at__isnull=True))


def _lease_fields(now: datetime) -> dict[str, datetime]:
    return {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds())}


def _lost_at(run: EvalRun) -> str:
    beat = f"no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if run.heartbeat_at else "no heartbeat"
    return f"{beat}, at {run.progress_done}/{run.progress_total} cases"


# --- claiming: a queued run, or a running one whose worker died -----------------
def claim_run(run_id: int) -> EvalRun | None:
    """Claim ``run_id`` for this worker: the row, now held by us, or None where it is not ours to run.

    Queued: claimed at once. Running under a lapsed lease: taken over (see ``_take_over``).
    Finished, cancelled, or running under a live lease (a second delivery while its worker
    lives): None.
    """
    now = timezone.now()
    if EvalRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=now, attempt=F("attempt") + 1, **_lease_fields(now)):
        return EvalRun.objects.get(pk=run_id)
    return _take_over(run_id)


def _take_over(run_id: int) -> EvalRun | None:
    """Wait for the lease on a running run to lapse, then claim it; None if it finished or is still held.

    Celery redelivers the task the moment the pool process running it dies, while the lease that
    process held is still live: wait that lease out. A lease that moves meanwhile has a live holder
    (this is a duplicate delivery): leave the run to it.
    """
    poll = min(1.0, lease_seconds() / HEARTBEATS_PER_LEASE)
    seen: datetime | None = None
    while True:
        run = EvalRun.objects.get(pk=run_id)
        if run.status != Status.RUNNING:
            log.info("eval run %s is %s: not run again", run_id, run.status)
            return None
        now = timezone.now()
        if not EvalRun.objects.filter(_lapsed(now), pk=run_id).exists():
            held_until = run.lease_expires_at or (run.heartbeat_at or now) + timedelta(seconds=lease_seconds())
            if seen is not None and held_until != seen:
                log.info("eval run %s is running, and its worker renews its lease: not run again", run_id)
                return None
            seen = held_until
            time.sleep(min(poll, max((held_until - now).total_seconds(), 0.0) + 0.05))
            continue
        claimed = _claim_lapsed(run, now)
        if claimed is not None or not EvalRun.objects.filter(pk=run_id, status=Status.RUNNING).exists():
            return claimed
        # Another delivery took it first (or it moved on): look again, and leave it to that one.


def _claim_lapsed(run: EvalRun, now: datetime) -> EvalRun | None:
    """The run whose lease lapsed: cancelled if an operator asked it to stop, failed after ``MAX_ATTEMPTS``,
    else claimed by this worker and restarted from its first case."""
    held = EvalRun.objects.filter(_lapsed(now), pk=run.pk, status=Status.RUNNING, attempt=run.attempt)
    lost = _lost_at(run)
    if run.cancel_requested:
        held.update(status=Status.CANCELLED, finished_at=now, progress_note="",
                    error=f"cancelled; the worker running it was lost ({lost})")
        return None
    if run.attempt >= MAX_ATTEMPTS:
        held.update(status=Status.FAILED, finished_at=now, progress_note="",
                    error=f"the worker running it was lost {run.attempt} times, the last {lost}; not run again "
                          "(does it run the worker out of memory?)")
        return None
    recovery = {"attempt": run.attempt + 1, "taken_over_at": now.isoformat(), "lost": lost}
    recoveries = [*(run.summary or {}).get("recovered", []), recovery]
    with transaction.atomic():
        if not held.filter(cancel_requested=False).update(
                attempt=F("attempt") + 1, progress_done=0, progress_total=0, progress_note="",
                summary={"recovered": recoveries}, **_lease_fields(now)):
            return None
        # Restarted from the beginning: the dead attempt's results would count its cases twice.
        EvalResult.objects.filter(run_id=run.pk).delete()
    log.warning("eval run %s (%s): the worker running attempt %s was lost (%s); attempt %s restarts it",
                run.pk, run.kind, run.attempt, lost, run.attempt + 1)
    return EvalRun.objects.get(pk=run.pk)


# --- running ------------------------------------------------------------------
class RunContext:
    """What a runner works through: parameters, target, results, grades, progress and cancellation."""

    def __init__(self, run: EvalRun, listeners: Sequence[ProgressListener] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run
        self.parameters: dict[str, Any] = dict(run.parameters or {})
        self.target: Target | None = None
        self.done = 0
        self.total = 0
        self.note = ""
        self.listeners = tuple(listeners)
        self.attempt = run.attempt
        self.recoveries: list[dict[str, Any]] = list((run.summary or {}).get("recovered", []))
        self.lost = False  # our lease lapsed and the run was taken over or reaped
        self._clock = clock
        self._written_at = float("-inf")
        self._renewed_at = clock()
        self._serves: dict[str, Serve | None] = {}

    # progress ---------------------------------------------------------------
    def set_total(self, total: int) -> None:
        self.total = total
        self._report(force=True)

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.done += count
        if note is not None:
            self.note = note
        self._report()

    def each(self, items: Iterable[T], label: Callable[[T], str] = str) -> Iterator[T]:
        """Yield the cases one by one: the total set first, cancellation checked before each, progress after."""
        items = list(items)
        self.set_total(len(items))
        for item in items:
            self.check_cancelled()
            self.note = label(item)[:200]
            yield item
            self.advance()

    def check_cancelled(self) -> None:
        self._check_held()
        if EvalRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
            raise RunCancelled(f"run {self.run.pk} was cancelled after {self.done} of {self.total} cases")

    def heartbeat(self) -> None:
        """Renew the lease on the run (a heartbeat thread does this by itself while the runner works)."""
        self._renew()

    def _check_held(self) -> None:
        if self.lost:
            raise RunLost(f"run {self.run.pk}: attempt {self.attempt} lost its lease (taken over or reaped)")

    def _renew(self, **fields: Any) -> None:
        """Write to our own run's row, renewing the lease; a row that is not ours any more is not written."""
        started = self._clock()
        if not EvalRun.objects.filter(pk=self.run.pk, status=Status.RUNNING, attempt=self.attempt).update(
                **fields, **_lease_fields(timezone.now())):
            self.lost = True
        self._renewed_at = started

    def _report(self, force: bool = False) -> None:
        now = self._clock()
        persisted = force or now - self._written_at >= PROGRESS_WRITE_INTERVAL
        if persisted:
            self._written_at = now
            self._renew(progress_done=self.done, progress_total=self.total, progress_note=self.note[:200])
        _tell(self.listeners, Progress(self.run.pk, self.run.kind, Status.RUNNING, self.done, self.total,
                                        self.note, persisted))

    # results ----------------------------------------------------------------
    def record(self, *, name: str, work_class: str, verdict: str, case: EvalCase | None = None,
               subject: str | None = None, subject_kind: str = ProfileEntry.Kind.SERVE,
               **fields: Any) -> EvalResult:
        """Store one result; a serve subject is stamped with the serve's identity as it is now.

        ``subject`` defaults to the target serve's name; a run against a bare base URL has none,
        and its results never reach the quality profile.
        """
        self._check_held()
        if subject is None:
            subject = self.target.serve_name if self.target else ""
        if subject and subject_kind == ProfileEntry.Kind.SERVE:
            serve = self._serve(subject)
            if serve is not None:
                fields.setdefault("fingerprint", serve.fingerprint())
                fields.setdefault("identity", serve.identity())
        return EvalResult.objects.create(run=self.run, case=case, name=name[:200], work_class=work_class,
                                         verdict=verdict, subject=subject, subject_kind=subject_kind, **fields)

    def grade(self, result: EvalResult, *, score: float, source: str = Grade.Source.VERIFIER, grader: str = "",
              dimensions: dict[str, float] | None = None, note: str = "", judge_serve: Serve | None = None,
              review_status: str = Grade.Review.PENDING) -> Grade:
        if not 0.0 <= score <= 1.0:
            raise BadParameters(f"a grade is a score from 0 to 1, not {score!r} ({result.name})")
        return Grade.objects.create(result=result, source=source, grader=grader[:100], score=score,
                                    dimensions=dimensions or {}, note=note, judge_serve=judge_serve,
                                    review_status=review_status)

    def _serve(self, name: str) -> Serve | None:
        if name not in self._serves:
            self._serves[name] = Serve.objects.filter(name=name).first()
        return self._serves[name]


class _Heartbeat:
    """Renews the run's lease while the runner is inside one long case (a slow answer, a benchmark level).

    Progress writes renew it too; this thread writes only when none did for a beat, so a run
    that reports often costs no extra writes.
    """

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._every = lease_seconds() / HEARTBEATS_PER_LEASE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"eval-run-{ctx.run.pk}-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)  # at most a database write that waits for a lock

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._every / 2) and not self._ctx.lost:
                if self._ctx._clock() - self._ctx._renewed_at < self._every:
                    continue
                try:
                    self._ctx.heartbeat()
                except Exception:
                    # One missed beat is not a lost lease: the lease outlasts several.
                    log.warning("eval run %s: heartbeat failed", self._ctx.run.pk, exc_info=True)
        finally:
            connection.close()  # this thread's own connection


def execute_run(run_id: int, *, listeners: Sequence[ProgressListener] = (),
                clock: Callable[[], float] = time.monotonic) -> EvalRun:
    """Run a queued run to its end, or take over one whose worker died, and return the finished row.

    A run that is finished, cancelled, or running under a live lease (its worker lives) is
    returned untouched: this is what makes the Celery task safe to deliver twice. A running run
    whose lease lapsed (Celery redelivered the task of a pool process that died) is restarted
    from its first case, the recovery noted in its summary (``claim_run``).
    """
    run = claim_run(run_id)
    if run is None:
        return EvalRun.objects.get(pk=run_id)
    ctx = RunContext(run, listeners, clock)
    try:
        ctx.target = target_from_run_fields(run.target_serve_id, run.base_url, run.model)
        with _Heartbeat(ctx):
            outcome = runner_module(run.kind).execute(ctx)
    except RunLost as lost:
        log.warning("eval run %s: %s; this worker stops", run_id, lost)
        return EvalRun.objects.get(pk=run_id)
    except RunCancelled as stop:
        return _finish(ctx, Status.CANCELLED, error=str(stop))
    except EvalError as exc:
        return _finish(ctx, Status.FAILED, error=exc.describe())
    except Exception as exc:
        log.exception("eval run %s (%s) failed", run_id, run.kind)
        return _finish(ctx, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # Ctrl-C at the terminal, SystemExit: record it, then let it go on
        interrupted = Status.CANCELLED if isinstance(exc, KeyboardInterrupt) else Status.FAILED
        _finish(ctx, interrupted, error=f"interrupted ({type(exc).__name__})")
        raise
    ended = Status.GATE_FAILED if outcome.gate_passed is False else Status.SUCCEEDED
    try:
        with transaction.atomic():
            finished = _finish(ctx, ended, summary=outcome.summary, gate_passed=outcome.gate_passed, tell=False)
            if outcome.updates_profile:
                from evals.profile_loop import refresh_candidate

                refreshed = refresh_candidate()
                finished.summary["candidate_profile"] = asdict(refreshed)
                finished.summary.setdefault("lines", []).append(refreshed.describe())
                finished.save(update_fields=["summary"])
    except Exception as exc:
        log.exception("eval run %s: could not update the candidate profile", run_id)
        return _finish(ctx, Status.FAILED, error=f"could not update the candidate profile: "
                                                 f"{type(exc).__name__}: {exc}")
    _tell(ctx.listeners, _final_progress(finished))
    return finished


def _finish(ctx: RunContext, status: str, *, summary: dict[str, Any] | None = None, gate_passed: bool | None = None,
            error: str = "", tell: bool = True) -> EvalRun:
    now = timezone.now()
    summary = dict(summary or {})
    if ctx.recoveries:
        summary["recovered"] = ctx.recoveries
        summary["lines"] = [*summary.get("lines", []), *(
            f"recovered: the worker running attempt {r['attempt'] - 1} was lost ({r['lost']}); "
            f"attempt {r['attempt']} took the run over and restarted it from the beginning" for r in ctx.recoveries)]
    updated = EvalRun.objects.filter(pk=ctx.run.pk, status=Status.RUNNING, attempt=ctx.attempt).update(
        status=status, finished_at=now, heartbeat_at=now, lease_expires_at=None, progress_done=ctx.done,
        progress_total=ctx.total, progress_note="", summary=summary, gate_passed=gate_passed, error=error)
    if not updated:
        raise RunStateError(f"run {ctx.run.pk} was no longer held by attempt {ctx.attempt} when it finished "
                            "(taken over or reaped)")
    run = EvalRun.objects.get(pk=ctx.run.pk)
    if tell:
        _tell(ctx.listeners, _final_progress(run))
    return run


def _final_progress(run: EvalRun) -> Progress:
    return Progress(run.pk, run.kind, run.status, run.progress_done, run.progress_total, "", True, run.gate_passed)


def _tell(listeners: Sequence[ProgressListener], progress: Progress) -> None:
    for listener in listeners:
        try:
            listener(progress)
        except Exception:
            # A broken progress display must not fail the run it displays.
            log.warning("progress listener failed for run %s", progress.run_id, exc_info=True)
