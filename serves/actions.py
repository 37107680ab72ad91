"""Lifecycle actions on serves: claim, read state, plan, run, record a ServeEvent.

Each action takes a serve id and re-reads the row, so Celery tasks, the admin
and the command line all go through the same code. One lifecycle operation per
serve runs at a time, across every worker: the claim is a conditional UPDATE.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from serves.claims import OperationResult, claim, release
from serves.docker_state import DockerUnavailable, read_state
from serves.lifecycle import Plan, PlanKind, plan_down, plan_up, run_plan, start_hint
from serves.loading import ready, transition
from serves.models import DockerState, Health, ModelState, Runtime, Serve, ServeEvent
from serves.probes import gpu_memory, probe

log = logging.getLogger(__name__)

Outcome = ServeEvent.Outcome


def _state_of(serve: Serve) -> tuple[DockerState, str]:
    if not serve.is_local:
        return DockerState.REMOTE, ""
    try:
        return read_state(serve.container).state, ""
    except DockerUnavailable as exc:
        return DockerState.UNKNOWN, str(exc)


def plan_for(serve: Serve, action: str) -> tuple[Plan, DockerState, str]:
    """The plan an action would follow now, without running anything (what --dry-run shows)."""
    state, problem = _state_of(serve)
    planner = plan_up if action == "up" else plan_down
    if state == DockerState.UNKNOWN and serve.is_local:
        # Docker cannot be asked: show what a running engine would be told.
        assumed = DockerState.MISSING if action == "up" else DockerState.RUNNING
        plan = planner(serve, assumed)
        return Plan(plan.kind, f"docker state unknown ({problem}); {plan.explanation}", plan.commands), state, problem
    return planner(serve, state), state, problem


def do_lifecycle(serve_id: int, action: str, requested_by: str, *, dry_run: bool = False) -> OperationResult:
    """Run ``up`` or ``down`` on one serve and record what happened."""
    if action not in ("up", "down"):
        raise ValueError(f"unknown lifecycle action {action!r}")
    serve = Serve.objects.get(pk=serve_id)
    if dry_run:
        plan, state, _problem = plan_for(serve, action)
        return OperationResult(serve.name, action, Outcome.DRY_RUN, plan.explanation, plan.commands,
                               state_before=state)
    token = claim(serve_id, action)
    if token is None:
        held = Serve.objects.values_list("busy_action", flat=True).get(pk=serve_id)
        return _record(serve, action, requested_by, timezone.now(), Outcome.BUSY,
                       f"another operation ({held}) holds this serve; nothing was run", [], "", "")
    started = timezone.now()
    try:
        plan, state, problem = plan_for(serve, action)
        if problem and serve.is_local:
            return _record(serve, action, requested_by, started, Outcome.FAILED, problem, [], state, state)
        if plan.kind is PlanKind.REFUSE:
            return _record(serve, action, requested_by, started, Outcome.REFUSED, plan.explanation, [], state, state)
        if plan.kind is PlanKind.NOTHING:
            return _record(serve, action, requested_by, started, Outcome.NOTHING, plan.explanation, [], state, state)
        result = run_plan(plan)
        after, _ = _state_of(serve)
        Serve.objects.filter(pk=serve_id).write_state(state=after, state_detail=plan.explanation[:500])
        log.info("serve %s: %s -> %s (%s by %s)", serve.name, state, after, action, requested_by)
        if result.ok:
            _model_state_after_compose(serve, action, after, requested_by)
        if result.ok:
            outcome, detail = Outcome.OK, plan.explanation
        else:
            code = "timed out" if result.returncode is None else f"exit {result.returncode}"
            outcome, detail = Outcome.FAILED, f"{plan.command_line} failed ({code}): {_last_line(result.output_tail)}"
        return _record(serve, action, requested_by, started, outcome, detail, plan.commands, state, after,
                       result.output_tail)
    finally:
        release(serve_id, token)


def do_status(serve_id: int, requested_by: str, *, record: bool = True) -> OperationResult:
    """Refresh the serve's last known state: docker state, health, reported model, GPU memory."""
    serve = Serve.objects.get(pk=serve_id)
    token = claim(serve_id, "status")
    if token is None:
        return OperationResult(serve.name, "status", Outcome.BUSY, "another operation holds this serve", [],
                               serve.state, serve.state)
    started = timezone.now()
    try:
        before = serve.state
        state, problem = _state_of(serve)
        if state in (DockerState.RUNNING, DockerState.REMOTE):
            probed = probe(serve)
        else:
            probed = None
        health = probed.health if probed else (Health.UNKNOWN if problem else Health.UNREACHABLE)
        model = ", ".join(probed.model_ids) if probed else ""
        detail = problem or (probed.detail if probed else "") or _down_detail(serve, state)
        fields: dict[str, object] = {}
        if probed is not None and probed.listed:  # an unanswered /models leaves the last probed limit as it was
            fields["context_limit_probed"] = probed.context_limit
        Serve.objects.filter(pk=serve_id).write_state(
            state=state, health=health, reported_model=model[:200], gpu_memory=gpu_memory(serve.gpu),
            state_detail=detail[:500], checked_at=timezone.now(), **fields,
        )
        summary = f"{state}, health {health}" + (f", model {model}" if model else "")
        summary += f" ({detail})" if detail else ""
        if serve.run_by == Runtime.COMPOSE:
            _model_state_seen(serve, state, health)
        changed = state != before or health != serve.health
        if changed:  # one line on the terminal, and an event, for every change of state or health
            log.info("serve %s: %s, health %s -> %s, health %s", serve.name, before, serve.health, state, health)
        if record or changed:
            return _record(serve, "status", requested_by, started, Outcome.OK, summary, [], before, state)
        return OperationResult(serve.name, "status", Outcome.OK, summary, [], before, state)
    finally:
        release(serve_id, token)


def _model_state_after_compose(serve: Serve, action: str, after: DockerState, requested_by: str) -> None:
    """``up``/``down`` of a container moves its model state: loaded once it answers (the watch promotes a
    container still starting), unloaded once stopped."""
    serve.refresh_from_db()
    if action == "up" and after == DockerState.RUNNING:
        to = ModelState.LOADED if ready(serve) else ModelState.LOADING
    elif action == "down" and after != DockerState.RUNNING:
        to = ModelState.UNLOADED
    else:
        return
    if serve.model_state != to:
        transition(serve, to, action="load" if action == "up" else "unload", requested_by=requested_by,
                   detail=f"container {after} (serves {action})")


def _model_state_seen(serve: Serve, state: DockerState, health: Health) -> None:
    """The status sweep's view of a container started or stopped outside Anvil."""
    if state == DockerState.RUNNING and health == Health.OK and serve.model_state != ModelState.LOADED:
        transition(serve, ModelState.LOADED, action="status", requested_by="status sweep",
                   detail="the container runs and answers")
    elif state not in (DockerState.RUNNING, DockerState.UNKNOWN) and serve.model_state == ModelState.LOADED:
        transition(serve, ModelState.UNLOADED, action="status", requested_by="status sweep",
                   detail=f"the container is {state}")


def _down_detail(serve: Serve, state: DockerState) -> str:
    if state in (DockerState.MISSING, DockerState.EXITED, DockerState.CREATED):
        return f"not running; start it with: {start_hint(serve)}"
    return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _record(serve: Serve, action: str, requested_by: str, started: object, outcome: str, detail: str,
            commands: list[list[str]], before: str, after: str, output_tail: str = "") -> OperationResult:
    event = ServeEvent.objects.create(
        serve=serve, action=action, requested_by=requested_by[:150], started_at=started, finished_at=timezone.now(),
        outcome=outcome, state_before=before, state_after=after, commands=commands, output_tail=output_tail,
        detail=detail[:1000],
    )
    return OperationResult(serve.name, action, outcome, detail, commands, before, after, output_tail, event.pk)
