"""The launcher restarts a child whose spec says so, with back-off, until a crash loop stops the stack.

The real Supervisor over stub children (shell one-liners); only the back-off is shortened.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from anvil_site.launcher import ChildSpec, RestartPolicy, Supervisor
from tests.support.waiting import wait_for

FAST = RestartPolicy(first_delay=0.05, max_delay=0.1, stable_after=60.0, max_restarts=5, window=60.0)


class Running:
    """A Supervisor whose wait() runs on a thread, so the test can watch and then stop it."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.out = io.StringIO()
        self.supervisor = Supervisor(out=self.out, stop_timeout=2, restart_policy=policy)
        self.code: int | None = None
        self._thread = threading.Thread(target=self._wait, daemon=True)

    def _wait(self) -> None:
        self.code = self.supervisor.wait()

    def start(self, *specs: ChildSpec) -> None:
        for spec in specs:
            self.supervisor.start(spec)
        self._thread.start()

    def output(self) -> str:
        return self.out.getvalue()

    def pids(self, name: str) -> list[int]:
        return [int(pid) for pid in re.findall(rf"started {name} \(pid (\d+)\)", self.output())]

    def finish(self, timeout: float = 10) -> int | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"wait() did not return:\n{self.output()}"
        return self.code


Launch = Callable[..., Running]


@pytest.fixture
def running() -> Iterator[Launch]:
    made: list[Running] = []

    def make(policy: RestartPolicy = FAST) -> Running:
        made.append(Running(policy))
        return made[-1]

    yield make
    for each in made:
        each.supervisor.request_stop("test over")
        each.finish()
        each.supervisor.stop_all()


def runs(counter: Path, script: str) -> ChildSpec:
    """A restartable child that runs ``script`` with $n = how many times it has been started."""
    return ChildSpec("flaky", ["sh", "-c", f'n=$(( $(cat "{counter}" 2>/dev/null || echo 0) + 1 )); '
                                           f'echo $n > "{counter}"; {script}'], restart=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_restartable_child_that_exits_is_restarted_and_its_siblings_keep_running(running: Launch,
                                                                                   tmp_path: Path) -> None:
    stack = running()
    stack.start(ChildSpec("steady", ["sleep", "30"]),
                runs(tmp_path / "n", 'if [ $n = 1 ]; then exit 2; fi; exec sleep 30'))
    steady = stack.pids("steady")[0]
    first = stack.pids("flaky")[0]
    wait_for(lambda: len(stack.pids("flaky")) == 2, 10, "the launcher to restart the child")
    assert f"flaky (pid {first}) exited with code 2; restarting it in 0.05 s" in stack.output()
    assert alive(stack.pids("flaky")[1]) and alive(steady)
    assert stack.code is None  # the stack runs on

    stack.supervisor.request_stop("test over")
    assert stack.finish() == 0
    stack.supervisor.stop_all()
    assert "flaky stopped" in stack.output() and "steady stopped" in stack.output()


def test_a_crash_loop_stops_the_stack_with_status_1_naming_the_child(running: Launch, tmp_path: Path) -> None:
    stack = running(RestartPolicy(first_delay=0.01, max_delay=0.04, max_restarts=3, window=60.0))
    stack.start(ChildSpec("steady", ["sleep", "30"]), ChildSpec("crasher", ["sh", "-c", "exit 3"], restart=True))
    assert stack.finish() == 1
    output = stack.output()
    pids = stack.pids("crasher")
    assert len(pids) == 4  # started, then restarted three times
    assert f"crasher (pid {pids[-1]}) exited with code 3: 4 deaths within 60 s, a crash loop; stopping the stack" \
        in output
    # Every death is reported, with the back-off doubling up to its ceiling.
    delays = re.findall(r"crasher \(pid \d+\) exited with code 3; restarting it in ([\d.]+) s", output)
    assert delays == ["0.01", "0.02", "0.04"]
    assert alive(stack.pids("steady")[0])  # the caller (runstack) stops the rest with stop_all


def test_the_back_off_doubles_to_its_ceiling_and_starts_over_once_the_child_stayed_up(running: Launch,
                                                                                       tmp_path: Path) -> None:
    stack = running(RestartPolicy(first_delay=0.05, max_delay=0.1, stable_after=1.0, max_restarts=10, window=60))
    # Three quick crashes, then up for 1.5 s (past stable_after) before a fourth, then up for good.
    stack.start(runs(tmp_path / "n", 'case $n in 1|2|3) exit 1;; 4) sleep 1.5; exit 1;; esac; exec sleep 30'))
    wait_for(lambda: len(stack.pids("flaky")) == 5, 15, "the fourth restart")
    delays = re.findall(r"flaky \(pid \d+\) exited with code 1; restarting it in ([\d.]+) s", stack.output())
    assert delays == ["0.05", "0.1", "0.1", "0.05"]


def test_a_child_without_restart_stops_the_stack_with_status_1(running: Launch) -> None:
    stack = running()
    stack.start(ChildSpec("steady", ["sleep", "30"]), ChildSpec("web", ["sh", "-c", "sleep 0.2; exit 4"]))
    assert stack.finish() == 1
    pid = stack.pids("web")[0]
    assert f"web (pid {pid}) exited with code 4; stopping the rest of the stack" in stack.output()
    assert "restarted" not in stack.output()


def test_a_dead_childs_leftover_processes_are_killed_before_it_is_restarted(running: Launch, tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild"
    stack = running()
    # The first run leaves a process in its group (as a Celery worker leaves its pool) and dies.
    stack.start(runs(tmp_path / "n", f'if [ $n = 1 ]; then sleep 30 & echo $! > "{grandchild}"; exit 1; fi; '
                                     'exec sleep 30'))
    wait_for(lambda: len(stack.pids("flaky")) == 2, 10, "the launcher to restart the child")
    wait_for(lambda: not alive(int(grandchild.read_text())), 5, "the dead child's leftover process to be killed")
