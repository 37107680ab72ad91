"""SIGTERM stops the launcher at any moment of its life, and leaves no child behind.

The signal handler once called ``threading.Event.set()``; when Python ran it while
the main thread sat inside ``Event.wait()`` holding the event's lock, the thread
deadlocked on itself and the stack ignored every SIGTERM after that. Each run
here is a real process (tests/support/stub_stack.py: the real Supervisor over
stub children) that gets SIGTERM at a random moment: during start-up, while a
child is becoming ready, while running and restarting a crashing child, or a
second one while already stopping; or sends it to itself at a random Python
call boundary of its main thread, which includes the moments it holds a lock.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.processes import ROOT, stop_group
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

RUNS = 200
PARALLEL = 8
SEED = 20240611
STOP_TIMEOUT = 2.0  # the stub supervisor's per-child grace before SIGKILL
# After its last SIGTERM a run must be gone within the stop timeout, plus slack for two loaded cores.
GRACE = STOP_TIMEOUT + 4.0
# A self-signalling run lives until its K-th call boundary (start-up is ~7,000 of them, then ~4,000 a
# second), then stops.
SELF_SIGNAL_EVENTS = 15_000
SELF_SIGNAL_LIFETIME = 25.0
STUB_STACK = ROOT / "tests" / "support" / "stub_stack.py"


@dataclass(frozen=True)
class Plan:
    index: int
    sigterm_after: tuple[float, ...] = ()  # seconds from spawn, sent from outside
    sigterm_at_event: int = 0  # sent by the run itself at this call boundary of its main thread


def plans(rng: random.Random) -> list[Plan]:
    out = []
    for index in range(RUNS):
        if index % 3 == 2:
            out.append(Plan(index, sigterm_at_event=rng.randint(1, SELF_SIGNAL_EVENTS)))
            continue
        first = rng.uniform(0.05, 1.0)
        # Half the runs get a second SIGTERM while the stack is already stopping.
        second = (first + rng.uniform(0.0, 0.3),) if rng.random() < 0.5 else ()
        out.append(Plan(index, (first, *second)))
    return out


def launched_groups(log: str) -> set[int]:
    """Every child's pid, which is also its process group (started, or restarted)."""
    return {int(line.rsplit("(pid ", 1)[1].rstrip(")")) for line in log.splitlines()
            if "started " in line and "(pid " in line}


def started_names(log: str) -> set[str]:
    return {line.split("started ", 1)[1].split(" (pid ", 1)[0] for line in log.splitlines()
            if "| started " in line}


def alive_in_groups(groups: set[int]) -> list[str]:
    found = []
    for proc in psutil.process_iter(["status", "cmdline"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {proc.info['cmdline']}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def run_once(plan: Plan, work: Path) -> str | None:
    """Run one stub stack under ``plan``; return what went wrong, or None."""
    flag_dir = work / f"run-{plan.index}"
    flag_dir.mkdir()
    log_path = flag_dir / "stack.log"
    argv = [sys.executable, str(STUB_STACK), "--flag-dir", str(flag_dir), "--stop-timeout", str(STOP_TIMEOUT)]
    if plan.sigterm_at_event:
        argv += ["--sigterm-at-event", str(plan.sigterm_at_event)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    failure = None
    try:
        failure = judge(plan, process, log_path)
        return failure
    finally:
        stop_group(process, timeout=2)
        if failure:  # whatever the run left behind goes now, not with the next test
            for group in launched_groups(log_path.read_text(errors="replace")):
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def judge(plan: Plan, process: subprocess.Popen[bytes], log_path: Path) -> str | None:
    spawned = time.monotonic()
    for moment in plan.sigterm_after:
        # Not a wait on a condition: the random moment of the signal is what is under test.
        time.sleep(max(0.0, spawned + moment - time.monotonic()))
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=GRACE if plan.sigterm_after else SELF_SIGNAL_LIFETIME)
    except subprocess.TimeoutExpired:
        return f"{plan}: still running after SIGTERM\n{log_path.read_text(errors='replace')}"
    output = log_path.read_text(errors="replace")
    # -SIGTERM is fair only before the handlers were installed, or after the stack was stopped: Python
    # restores the default disposition while the interpreter shuts down.
    unstopped = {name for name in started_names(output) if f"{name} stopped (code" not in output}
    if code not in (0, -signal.SIGTERM) or (code and unstopped):
        return f"{plan}: exit status {code}\n{output}"
    groups = launched_groups(output)
    try:
        wait_for(lambda: not alive_in_groups(groups), 5, "every child and grandchild to exit")
    except AssertionError:
        return f"{plan}: left {alive_in_groups(groups)} alive\n{output}"
    return None


def test_sigterm_at_any_moment_stops_the_stack_and_leaves_no_child_alive(tmp_path: Path) -> None:
    with ThreadPoolExecutor(PARALLEL) as pool:
        failures = [f for f in pool.map(lambda plan: run_once(plan, tmp_path), plans(random.Random(SEED))) if f]
    assert not failures, f"{len(failures)} of {RUNS} runs failed (seed {SEED}); the first:\n" + "\n".join(failures[:3])
