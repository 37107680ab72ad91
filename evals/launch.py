"""Runs an operator asks for from the console: made, checked and handed to a Celery worker in one step.

``start_run`` is the console's form (a kind, a serve or base URL + model, JSON
parameters); ``queue_reeval`` is the button beside a serve whose profile cells
went stale. Both refuse bad input with an ``EvalError`` (and its hint) before a
run exists, and enqueue only once the new row is committed.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from evals.errors import BadTarget, RunStateError, UnknownServe
from evals.models import EvalRun
from evals.runs import create_run, runner_spec
from evals.targets import resolve_target
from evals.tasks import enqueue_run
from serves.models import Serve

# The kind of run that re-measures a serve whose identity changed: the correctness
# gate, which writes fresh cells for the serve's work classes.
REEVAL_KIND = "preflight"


@transaction.atomic
def start_run(kind: str, *, serve: str = "", base_url: str = "", model: str = "",
              parameters: dict[str, Any] | None = None, requested_by: str = "") -> EvalRun:
    """A queued run of ``kind`` against ``serve`` (by name) or ``base_url`` + ``model``, enqueued."""
    spec = runner_spec(kind)
    target = None
    if serve or base_url or model:
        if not spec.needs_target:
            # The same rule as `runeval`, which offers no --serve for these kinds.
            raise BadTarget(f"a {kind} run takes no target", hint="leave the serve, base URL and model blank")
        target = resolve_target(serve=serve or None, base_url=base_url or None, model=model or None)
    run = create_run(kind, target=target, parameters=parameters, requested_by=requested_by)
    enqueue_run(run.pk)
    return run


def pending_reeval(serve_name: str) -> EvalRun | None:
    """The re-eval of this serve that is queued or running, if there is one."""
    return (EvalRun.objects.filter(kind=REEVAL_KIND, target_name=serve_name,
                                   status__in=(EvalRun.Status.QUEUED, EvalRun.Status.RUNNING))
            .order_by("-created_at", "-pk").first())


@transaction.atomic
def queue_reeval(serve_name: str, requested_by: str) -> EvalRun:
    """Queue a ``REEVAL_KIND`` run against a serve; one at a time per serve (a second click is refused)."""
    # The serve's row is locked so that two clicks at once cannot both find no pending run.
    if Serve.objects.select_for_update().filter(name=serve_name).first() is None:
        raise UnknownServe(f"unknown serve {serve_name!r}")
    pending = pending_reeval(serve_name)
    if pending is not None:
        raise RunStateError(f"a re-eval of {serve_name} is already {pending.status} (run {pending.pk})",
                            hint="wait for it to finish, or cancel it first")
    return start_run(REEVAL_KIND, serve=serve_name, requested_by=requested_by)
