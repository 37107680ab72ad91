"""`manage.py runstack` (what `make run` runs) starts every child and leaves none behind."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from django.conf import settings

from anvil_site.launcher import http_ok
from inference.keys import create_key
from tests.support.processes import ROOT, child_env, free_port, manage, stop_group
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EXPECTED_CHILDREN = {"web", "worker", "beat", "hrm"} | ({"redis"} if settings.REDIS_URL_IS_EMBEDDED else set())


class Stack:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, url: str, hrm_port: int) -> None:
        self.process, self.log, self.url, self.hrm_port = process, log, url, hrm_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def pids(self, name: str) -> list[int]:
        """The pid of each start of ``name``: the first start, then every restart."""
        return [int(line.rsplit("(pid ", 1)[1].rstrip(")")) for line in self.output().splitlines()
                if f"started {name} (pid " in line]

    def child_pid(self, name: str) -> int:
        pids = self.pids(name)
        assert pids, f"{name} was not started:\n{self.output()}"
        return pids[0]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port, hrm_port = free_port(), free_port()
    env = child_env(ANVIL_BIND=f"127.0.0.1:{port}", ANVIL_VAR_DIR=str(tmp_path / "var"),
                    ANVIL_HRM_PORT=str(hrm_port), ANVIL_ADMIN_PASSWORD="launcher-test-pass", NO_COLOR="1")
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(manage("runstack"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    running = Stack(process, log, f"http://127.0.0.1:{port}", hrm_port)
    try:
        wait_for(lambda: process.poll() is None and "Anvil is up at" in running.output(), 120,
                 "the launcher to report the stack is up")
        yield running
    finally:
        leftovers = running.descendants() if process.poll() is None else []
        stop_group(process)
        for child in leftovers:
            if child.is_running():
                child.kill()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stack_serves_and_stops_every_child_on_sigterm(stack: Stack) -> None:
    for name in EXPECTED_CHILDREN:
        assert psutil.pid_exists(stack.child_pid(name)), name
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
    minted = create_key("launcher-test")
    auth = {"Authorization": f"Bearer {minted.secret}"}
    wait_for(lambda: "hrm-demo" in [m["id"] for m in httpx.get(f"{stack.url}/v1/models", headers=auth,
                                                                timeout=5).json()["data"]],
             10, "the launcher's HRM worker to be listed")
    # The in-worker engine answers through the front door: its own contract, and OpenAI chat.
    generated = httpx.post(f"{stack.url}/generate", headers=auth, timeout=60,
                           json={"prompts": ["def "], "max_tokens": 4, "temperature": 0})
    assert generated.status_code == 200 and generated.headers["x-anvil-served-by"] == "hrm-demo"
    assert len(generated.json()["completions"]) == 1
    chat = httpx.post(f"{stack.url}/v1/chat/completions", headers=auth, timeout=60, json={
        "model": "hrm-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
    assert chat.status_code == 200 and chat.headers["x-anvil-served-by"] == "hrm-demo", chat.text
    admin = httpx.get(f"{stack.url}/admin/login/", timeout=5)
    assert admin.status_code == 200

    family = stack.descendants()
    assert len(family) >= len(EXPECTED_CHILDREN)
    os.kill(stack.process.pid, signal.SIGTERM)
    assert stack.process.wait(timeout=60) == 0
    wait_for(lambda: not alive(family), 10, "every child and grandchild to exit")
    for name in EXPECTED_CHILDREN:
        assert f"{name} stopped" in stack.output()


def test_a_killed_hrm_worker_comes_back_while_web_answers_and_a_killed_web_stops_the_stack(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {create_key('launcher-restart-test').secret}"}
    first = stack.child_pid("hrm")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: f"hrm (pid {first}) exited with code -9; restarting it in 1 s" in stack.output(), 10,
             "the launcher to report the HRM worker's death")
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200  # the front door stays up meanwhile
    wait_for(lambda: len(stack.pids("hrm")) == 2, 15, "the launcher to restart the HRM worker")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{stack.hrm_port}/readyz"), 120, "the restarted worker to be ready")
    generated = httpx.post(f"{stack.url}/generate", headers=auth, timeout=60,
                           json={"prompts": ["def "], "max_tokens": 4, "temperature": 0})
    assert generated.status_code == 200 and generated.headers["x-anvil-served-by"] == "hrm-demo", generated.text
    assert stack.process.poll() is None

    # Without the web process there is no front door to keep alive: its death stops everything.
    family = stack.descendants()
    web = stack.child_pid("web")
    os.kill(web, signal.SIGKILL)
    assert stack.process.wait(timeout=60) == 1
    assert f"web (pid {web}) exited with code -9; stopping the rest of the stack" in stack.output()
    wait_for(lambda: not alive(family), 10, "every other child to exit")
