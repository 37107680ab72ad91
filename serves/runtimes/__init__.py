"""Runtimes: who runs a serve, behind one small interface (start, stop, observe, log tail), picked by
``Serve.run_by``:

* ``compose``: a container, brought up and down with ``docker compose`` as ADR-0002 says (serves/lifecycle.py);
* ``process``: an engine Anvil starts and supervises on this host (serves/runtimes/process.py), its argv
  from an engine preset's named fields (serves/runtimes/presets.py) or the serve's own ``command``;
* ``remote``: an upstream Anvil only relays to; nothing to start or stop.

``serves/loading.py`` drives them through the model states; nothing else starts or stops a serve.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any, Protocol

from serves.models import DockerState, Runtime, Serve
from serves.runtimes.process import PROCESSES, Observed

LOG_TAIL_TIMEOUT = 15


@dataclass(frozen=True)
class Started:
    ok: bool
    detail: str
    commands: list[list[str]] = field(default_factory=list)
    adopted: bool = False  # it was running already: nothing was started


class ServeRuntime(Protocol):
    def start(self, serve: Serve, overrides: dict[str, Any]) -> Started: ...

    def stop(self, serve: Serve) -> str: ...

    def observe(self, serve: Serve) -> Observed: ...

    def log_tail(self, serve: Serve) -> str: ...


class ProcessServe:
    def start(self, serve: Serve, overrides: dict[str, Any]) -> Started:
        from serves.runtimes.presets import PresetError, build_argv

        try:
            argv = build_argv(serve, overrides)
        except PresetError as exc:
            return Started(False, f"cannot build the command: {exc}")
        try:
            record, started = PROCESSES.start(serve, argv)
        except OSError as exc:
            return Started(False, f"cannot start {argv[0]}: {exc}", [argv])
        detail = f"started (pid {record.pid})" if started else f"already running (pid {record.pid}): adopted"
        return Started(True, detail, [argv], adopted=not started)

    def stop(self, serve: Serve) -> str:
        return "stopped" if PROCESSES.stop(serve) else "was not running"

    def observe(self, serve: Serve) -> Observed:
        return PROCESSES.observe(serve)

    def log_tail(self, serve: Serve) -> str:
        return PROCESSES.log_tail(serve)


class ComposeServe:
    def start(self, serve: Serve, overrides: dict[str, Any]) -> Started:
        from serves.actions import plan_for
        from serves.lifecycle import PlanKind, run_plan

        plan, state, problem = plan_for(serve, "up")
        if problem:
            return Started(False, problem)
        if plan.kind is PlanKind.REFUSE:
            return Started(False, plan.explanation)
        if plan.kind is PlanKind.NOTHING:
            return Started(True, plan.explanation, adopted=True)
        result = run_plan(plan)
        detail = plan.explanation if result.ok else f"{plan.command_line} failed: {result.output_tail[-300:]}"
        return Started(result.ok, detail, plan.commands, adopted=state == DockerState.RUNNING)

    def stop(self, serve: Serve) -> str:
        from serves.actions import plan_for
        from serves.lifecycle import PlanKind, run_plan

        plan, _state, problem = plan_for(serve, "down")
        if problem or plan.kind is not PlanKind.RUN:
            return problem or plan.explanation
        result = run_plan(plan)
        return plan.explanation if result.ok else f"{plan.command_line} failed: {result.output_tail[-300:]}"

    def observe(self, serve: Serve) -> Observed:
        from serves.docker_state import DockerUnavailable, read_state

        try:
            state = read_state(serve.container).state
        except DockerUnavailable as exc:
            return Observed(False, None, str(exc))
        return Observed(state == DockerState.RUNNING, None, f"container {state}")

    def log_tail(self, serve: Serve) -> str:
        try:
            done = subprocess.run(["docker", "logs", "--tail", "100", serve.container], capture_output=True,
                                  text=True, timeout=LOG_TAIL_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(no log: {exc})"
        return (done.stdout + done.stderr)[-8192:]


class RemoteServe:
    def start(self, serve: Serve, overrides: dict[str, Any]) -> Started:
        return Started(True, "an upstream Anvil only relays to: nothing to start", adopted=True)

    def stop(self, serve: Serve) -> str:
        return "an upstream Anvil only relays to: nothing to stop"

    def observe(self, serve: Serve) -> Observed:
        return Observed(True)

    def log_tail(self, serve: Serve) -> str:
        return ""


RUNTIMES: dict[Runtime, ServeRuntime] = {Runtime.PROCESS: ProcessServe(), Runtime.COMPOSE: ComposeServe(),
                                         Runtime.REMOTE: RemoteServe()}


def runtime_for(serve: Serve) -> ServeRuntime:
    return RUNTIMES[serve.run_by]

