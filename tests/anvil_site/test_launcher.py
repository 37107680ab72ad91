"""`manage.py runstack` (what `make run` runs) starts every child and leaves none behind."""

from __future__ import annotations

import json
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
from serves.models import Host
from tests.support.processes import ROOT, child_env, free_port, manage, stop_group
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EXPECTED_CHILDREN = {"web", "worker", "beat", "agent"} | ({"redis"} if settings.REDIS_URL_IS_EMBEDDED else set())
LOCAL_HOST = "launcher-host"  # ANVIL_HOST_NAME: the launcher runs this machine's host agent too


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


def start_stack(tmp_path: Path, port: int, hrm_port: int, log_name: str = "stack.log") -> Stack:
    env = child_env(ANVIL_BIND=f"127.0.0.1:{port}", ANVIL_VAR_DIR=str(tmp_path / "var"),
                    ANVIL_HRM_PORT=str(hrm_port), ANVIL_HRM_SWAP_PORT=str(free_port()),
                    ANVIL_ADMIN_PASSWORD="launcher-test-pass", NO_COLOR="1", ANVIL_HOST_NAME=LOCAL_HOST,
                    ANVIL_HOST_HEARTBEAT="0.5")
    log = tmp_path / log_name
    with open(log, "wb") as out:
        process = subprocess.Popen(manage("runstack"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    running = Stack(process, log, f"http://127.0.0.1:{port}", hrm_port)
    wait_for(lambda: process.poll() is None and "Anvil is up at" in running.output(), 120,
             "the launcher to report the stack is up")
    return running


def stop_stack(running: Stack) -> None:
    leftovers = running.descendants() if running.process.poll() is None else []
    stop_group(running.process)
    for child in leftovers:
        if child.is_running():
            child.kill()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, free_port(), free_port())
    try:
        yield running
    finally:
        stop_stack(running)


def model_loaded(stack: Stack, auth: dict[str, str]) -> bool:
    answer = httpx.get(f"{stack.url}/v1/models", headers=auth, timeout=5)
    return "hrm-demo" in [m["id"] for m in answer.json()["data"]]


def engine_pid(tmp_path: Path) -> int:
    """The demo model's engine: the child of its keeper (serves/process_keeper.py)."""
    keeper = json.loads((tmp_path / "var" / "serves" / "hrm-demo" / "process.json").read_text())["pid"]
    return psutil.Process(keeper).children()[0].pid


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stack_serves_and_stops_every_child_on_sigterm(stack: Stack) -> None:
    for name in EXPECTED_CHILDREN:
        assert psutil.pid_exists(stack.child_pid(name)), name
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
    minted = create_key("launcher-test")
    auth = {"Authorization": f"Bearer {minted.secret}"}
    # The demo model is a process serve the stack's worker loads: listed once it is loaded.
    wait_for(lambda: model_loaded(stack, auth), 120, "the demo model to be loaded")
    # The in-worker engine answers through the front door: its own contract, and OpenAI chat.
    generated = httpx.post(f"{stack.url}/generate", headers=auth, timeout=60,
                           json={"prompts": ["def "], "max_tokens": 4, "temperature": 0})
    assert generated.status_code == 200 and generated.headers["x-anvil-served-by"] == "hrm-demo"
    assert len(generated.json()["completions"]) == 1
    chat = httpx.post(f"{stack.url}/v1/chat/completions", headers=auth, timeout=60, json={
        "model": "hrm-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0})
    assert chat.status_code == 200 and chat.headers["x-anvil-served-by"] == "hrm-demo", chat.text
    admin = httpx.get(f"{stack.url}/admin/login/", timeout=5)
    assert admin.status_code == 200
    wait_for(lambda: Host.objects.filter(name=LOCAL_HOST, last_heartbeat__isnull=False).exists(), 60,
             "the launcher's host agent to beat")

    family = stack.descendants()  # the model's keeper and engine too: the worker started them
    assert len(family) >= len(EXPECTED_CHILDREN) + 2
    os.kill(stack.process.pid, signal.SIGTERM)
    assert stack.process.wait(timeout=90) == 0
    wait_for(lambda: not alive(family), 10, "every child and grandchild to exit")
    for name in EXPECTED_CHILDREN:
        assert f"{name} stopped" in stack.output()
    assert "serve hrm-demo stopped" in stack.output()


def test_a_dead_model_is_failed_and_reloaded_while_web_answers_and_a_killed_web_stops_the_stack(
        stack: Stack, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {create_key('launcher-model-test').secret}"}
    admin = {"Authorization": f"Bearer {create_key('launcher-admin', ['admin']).secret}"}
    wait_for(lambda: model_loaded(stack, auth), 120, "the demo model to be loaded")
    os.kill(engine_pid(tmp_path), signal.SIGKILL)

    def state() -> dict:
        rows = httpx.get(f"{stack.url}/v1/admin/models", headers=admin, timeout=5).json()["data"]
        return next(row for row in rows if row["id"] == "hrm-demo")

    failed = wait_for(lambda: state()["state"] == "failed" and state(), 20, "the watch to notice the dead engine")
    assert failed["last_error"]["code"] == "exited" and failed["on_demand"]
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200  # the front door stays up meanwhile
    assert httpx.post(f"{stack.url}/v1/admin/models/hrm-demo/load", headers=auth, timeout=10).status_code == 403
    # The demo serves load on demand: the next request loads the failed model again and is answered.
    generated = httpx.post(f"{stack.url}/generate", headers=auth, timeout=180,
                           json={"prompts": ["def "], "max_tokens": 4, "temperature": 0})
    assert generated.status_code == 200 and generated.headers["x-anvil-served-by"] == "hrm-demo", generated.text
    assert state()["state"] == "loaded"

    # The demo's second model shares the demo device (room for one): a request for it swaps them.
    chat = httpx.post(f"{stack.url}/v1/chat/completions", headers=auth, timeout=180, json={
        # Greedy: a sampled 4-token answer from the tiny demo model is sometimes only whitespace, which the
        # fresh install's verification rightly refuses as empty (CI saw it once).
        "model": "hrm-demo-swap", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4,
        "temperature": 0})
    assert chat.status_code == 200 and chat.json()["model"] == "hrm-demo-swap", chat.text
    wait_for(lambda: state()["state"] == "unloaded", 30, "the swap to have evicted hrm-demo")

    # Without the web process there is no front door to keep alive: its death stops everything.
    family = stack.descendants()
    web = stack.child_pid("web")
    os.kill(web, signal.SIGKILL)
    assert stack.process.wait(timeout=90) == 1
    assert f"web (pid {web}) exited with code -9; stopping the rest of the stack" in stack.output()
    wait_for(lambda: not alive(family), 10, "every other child to exit")


def test_a_restarted_stack_adopts_the_running_model_instead_of_starting_another(tmp_path: Path) -> None:
    port, hrm_port = free_port(), free_port()
    first = start_stack(tmp_path, port, hrm_port, "first.log")
    auth = {"Authorization": f"Bearer {create_key('launcher-adopt-test').secret}"}
    try:
        wait_for(lambda: model_loaded(first, auth), 120, "the demo model to be loaded")
        engine = engine_pid(tmp_path)
        os.kill(first.process.pid, signal.SIGKILL)  # the launcher dies with no chance to stop anything
        first.process.wait(timeout=30)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") is False, 30, "the old web process to go")
        assert psutil.pid_exists(engine)  # a process serve outlives its worker, and here its stack
    finally:
        for child in first.descendants() if first.process.poll() is None else []:
            child.kill()
    second = start_stack(tmp_path, port, hrm_port, "second.log")
    try:
        wait_for(lambda: model_loaded(second, auth), 60, "the adopted model to be listed")
        assert engine_pid(tmp_path) == engine  # adopted, not started twice
        generated = httpx.post(f"{second.url}/generate", headers=auth, timeout=60,
                               json={"prompts": ["def "], "max_tokens": 4, "temperature": 0})
        assert generated.status_code == 200
    finally:
        os.kill(second.process.pid, signal.SIGTERM)
        second.process.wait(timeout=90)
        stop_stack(second)
    assert not psutil.pid_exists(engine) or psutil.Process(engine).status() == psutil.STATUS_ZOMBIE
