"""The lifecycle every kind of eval run shares: create, claim, run case by case, cancel, finish.

A run is a row first (``create_run``), then work: ``execute_run(run_id)`` claims
it with a conditional UPDATE (queued -> running), so a Celery task delivered
twice, or a command and a task racing, run it once. The runner for the run's
kind does the work through a ``RunContext``: it records results and grades as it
goes, reports progress (written to the row at most every
``PROGRESS_WRITE_INTERVAL``; every change is handed to the listeners, e.g. a
terminal progress bar or a websocket group), and between cases checks whether an
operator asked it to stop. Whatever happens, the run ends succeeded, failed
(with the error) or cancelled; it is never left running by an exception. A run
that ends succeeded updates the candidate quality profile in the same
transaction (the profile loop counts succeeded runs only).

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
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, TypeVar

from django.db import transaction
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
# A running run whose worker died (OOM, SIGKILL) never finishes by itself: no
# progress write for this long means nobody is running it. Runners with long
# cases call ``ctx.heartbeat()``.
ABANDONED_AFTER = timedelta(minutes=30)


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


def enqueue_run(run_id: int) -> str:
    """Hand a queued run to a Celery worker once the current transaction commits; returns the task id."""
    from evals import tasks

    task_id = uuid.uuid4().hex
    EvalRun.objects.filter(pk=run_id).update(celery_task_id=task_id)
    transaction.on_commit(lambda: tasks.run_eval.apply_async((run_id,), task_id=task_id))
    return task_id


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
    """Fail running runs that stopped beating (their worker died); returns how many."""
    now = now or timezone.now()
    cutoff = now - ABANDONED_AFTER
    return EvalRun.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff).update(
        status=Status.FAILED, finished_at=now,
        error=f"abandoned: no progress for {int(ABANDONED_AFTER.total_seconds() // 60)} minutes "
              "(the worker running it stopped)")


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
        self._clock = clock
        self._written_at = float("-inf")
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
        if EvalRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
            raise RunCancelled(f"run {self.run.pk} was cancelled after {self.done} of {self.total} cases")

    def heartbeat(self) -> None:
        """Say the run is alive during a long case (see ``ABANDONED_AFTER``)."""
        EvalRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())

    def _report(self, force: bool = False) -> None:
        now = self._clock()
        persisted = force or now - self._written_at >= PROGRESS_WRITE_INTERVAL
        if persisted:
            self._written_at = now
            EvalRun.objects.filter(pk=self.run.pk).update(progress_done=self.done, progress_total=self.total,
                                                           progress_note=self.note[:200], heartbeat_at=timezone.now())
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


def execute_run(run_id: int, *, listeners: Sequence[ProgressListener] = (),
                clock: Callable[[], float] = time.monotonic) -> EvalRun:
    """Run a queued run to its end and return the finished row.

    A run that is not queued (already run, running elsewhere, cancelled) is
    returned untouched: this is what makes the Celery task safe to deliver twice.
    """
    now = timezone.now()
    claimed = EvalRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now, heartbeat_at=now)
    run = EvalRun.objects.get(pk=run_id)
    if not claimed:
        log.info("eval run %s is %s, not queued: not run again", run_id, run.status)
        return run
    ctx = RunContext(run, listeners, clock)
    try:
        ctx.target = target_from_run_fields(run.target_serve_id, run.base_url, run.model)
        outcome = runner_module(run.kind).execute(ctx)
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
    try:
        with transaction.atomic():
            finished = _finish(ctx, Status.SUCCEEDED, summary=outcome.summary, gate_passed=outcome.gate_passed,
                               tell=False)
            if outcome.updates_profile:
                from evals.profile_loop import refresh_candidate

                refreshed = refresh_candidate()
                finished.summary["candidate_profile"] = asdict(refreshed)
                finished.summary.setdefault("lines", []).append(
                    f"candidate profile: {refreshed.created} cells added, {refreshed.changed} changed, "
                    f"{refreshed.unchanged} unchanged (review the diff, then promote)")
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
    updated = EvalRun.objects.filter(pk=ctx.run.pk, status=Status.RUNNING).update(
        status=status, finished_at=now, heartbeat_at=now, progress_done=ctx.done, progress_total=ctx.total,
        progress_note="", summary=summary if summary is not None else {}, gate_passed=gate_passed, error=error)
    if not updated:
        raise RunStateError(f"run {ctx.run.pk} was no longer running when it finished (reaped?)")
    run = EvalRun.objects.get(pk=ctx.run.pk)
    if tell:
        _tell(ctx.listeners, _final_progress(run))
    return run


def _final_progress(run: EvalRun) -> Progress:
    return Progress(run.pk, run.kind, run.status, run.progress_done, run.progress_total, "", True)


def _tell(listeners: Sequence[ProgressListener], progress: Progress) -> None:
    for listener in listeners:
        try:
            listener(progress)
        except Exception:
            # A broken progress display must not fail the run it displays.
            log.warning("progress listener failed for run %s", progress.run_id, exc_info=True)
