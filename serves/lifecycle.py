"""Bringing serves up and down, mechanism-aware by container state (ADR-0002).

``plan_up``/``plan_down`` are pure: state in, what to run (argv lists, in
order) and why out. ``run_plan`` executes a plan with a timeout per command,
never through a shell, stopping at the first failure.

up:   running             -> docker compose up -d SERVICE (a no-op when unchanged,
                             a recreate when the compose config drifted)
      exited / created    -> docker compose up -d SERVICE (starts it; recreates on drift)
      missing             -> docker compose up -d SERVICE (creates it)
      paused              -> docker unpause NAME (Compose refuses to start a paused container)
      dead / restarting   -> left for the operator, with the reason
down: running / restarting -> docker stop NAME (every state that holds the GPU)
      paused              -> docker unpause NAME, then docker stop NAME (a frozen process
                             cannot act on SIGTERM: stopping it paused waits out the grace period)
      anything else       -> nothing to do
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from enum import StrEnum

from django.conf import settings

from serves.compose import compose_argv
from serves.models import DockerState, Serve

OUTPUT_TAIL_CHARS = 4000
STOP_GRACE_SECONDS = 30  # what `docker stop --time` gives an engine to free the GPU cleanly


class PlanKind(StrEnum):
    RUN = "run"
    NOTHING = "nothing"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    explanation: str
    commands: list[list[str]] = field(default_factory=list)

    @property
    def command_line(self) -> str:
        return " && ".join(shlex.join(argv) for argv in self.commands)


@dataclass(frozen=True)
class RunResult:
    ok: bool
    returncode: int | None
    output_tail: str


def start_hint(serve: Serve) -> str:
    return f"python manage.py serves up {serve.name}"


def plan_up(serve: Serve, state: DockerState) -> Plan:
    if not serve.is_local:
        return Plan(PlanKind.NOTHING, "an upstream Anvil relays to but does not run")
    if state in (DockerState.DEAD, DockerState.RESTARTING):
        return Plan(
            PlanKind.REFUSE,
            f"container {serve.container} is {state}: left for the operator (inspect it with "
            f"`docker logs {serve.container}`, then remove or fix it); recreating it blindly could hide the fault",
        )
    if state == DockerState.REMOVING:
        return Plan(PlanKind.REFUSE, f"container {serve.container} is being removed; try again when it is gone")
    if state == DockerState.PAUSED:
        return Plan(PlanKind.RUN, "paused: unpaused (Compose refuses to start a paused container)",
                    [["docker", "unpause", serve.container]])
    if serve.uses_compose:
        why = {
            DockerState.RUNNING: "running: compose up keeps it (recreated only if its config drifted)",
            DockerState.MISSING: "missing: compose up creates it",
        }.get(state, f"{state}: compose up starts it (recreated if its config drifted)")
        return Plan(PlanKind.RUN, why, [compose_argv(serve.compose_file, "up", "-d", serve.compose_service)])
    # A trusted start command: not drift-safe, so never re-run over an existing container.
    if not serve.trusted_command:
        return Plan(PlanKind.REFUSE, "its up command is not docker compose up and the serve is not marked trusted")
    if state == DockerState.RUNNING:
        return Plan(PlanKind.NOTHING, "running (a trusted command cannot check drift; left alone)")
    if state in (DockerState.EXITED, DockerState.CREATED):
        return Plan(PlanKind.RUN, f"{state}: started", [["docker", "start", serve.container]])
    return Plan(PlanKind.RUN, "missing: created by its trusted up command", [shlex.split(serve.up_command)])


def plan_down(serve: Serve, state: DockerState) -> Plan:
    if not serve.is_local:
        return Plan(PlanKind.NOTHING, "an upstream Anvil relays to but does not run")
    stop = ["docker", "stop", "--time", str(STOP_GRACE_SECONDS), serve.container]
    if state == DockerState.PAUSED:
        return Plan(PlanKind.RUN, "paused: unpaused, then stopped to free its GPU",
                    [["docker", "unpause", serve.container], stop])
    if state in (DockerState.RUNNING, DockerState.RESTARTING):
        return Plan(PlanKind.RUN, f"{state}: stopped to free its GPU", [stop])
    return Plan(PlanKind.NOTHING, f"{state}: holds no GPU, nothing to stop")


def run_plan(plan: Plan, timeout: float | None = None) -> RunResult:
    """Run the plan's commands in order (no shell), each with a timeout; keep the output's tail."""
    limit = timeout if timeout is not None else settings.ANVIL_COMPOSE_TIMEOUT
    output = ""
    for argv in plan.commands:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            output += _text(exc.stdout) + _text(exc.stderr) + f"\n[{argv[0]} timed out after {limit:g} s]"
            return RunResult(False, None, output[-OUTPUT_TAIL_CHARS:])
        except OSError as exc:
            return RunResult(False, None, (output + f"cannot run {argv[0]}: {exc.strerror}")[-OUTPUT_TAIL_CHARS:])
        output += (done.stdout or "") + (done.stderr or "")
        if done.returncode != 0:
            return RunResult(False, done.returncode, output[-OUTPUT_TAIL_CHARS:])
    return RunResult(True, 0, output[-OUTPUT_TAIL_CHARS:])


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
