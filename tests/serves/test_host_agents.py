"""Host agents with real processes: ``manage.py runhost hostb`` (a Celery worker on the queue ``host.hostb`` that
beats to Redis), Anvil under Daphne, a scripted engine as a ``process`` serve whose host is hostb. No other
worker runs, so a load that completes ran on hostb's queue.

* The load runs on the host's queue, and the front door answers through the serve; the control host's watch
  leaves it alone (its process is on hostb; hostb's agent watches it).
* A second agent of the same name refuses to start while the first beats.
* The agent is killed: within three beats its serve is unknown, and a request naming it gets a 503 saying why,
  never an answer from a serve nothing drives.
* The agent comes back: its serve answers again, with no reload (the engine outlived the agent).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from inference.keys import create_key
from serves.loading import do_unload
from serves.models import Host, ModelState, Serve, ServeEvent
from serves.operations import request_load
from serves.tasks import watch_serves
from tests.inference.test_pool_queues import scripted, state_of, unique
from tests.support.live import live_anvil
from tests.support.processes import ROOT, child_env, running
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEAT = "0.3"


@contextmanager
def agent(log_dir: Path, name: str) -> Iterator[None]:
    argv = [sys.executable, str(ROOT / "manage.py"), "runhost", name, "--gpu", "0=24576"]
    log = log_dir / f"runhost-{name}.log"
    with running(argv, child_env(ANVIL_HOST_HEARTBEAT=BEAT), log) as process:
        # Beating, and consuming (its log says ready): the row is written before the worker starts, and one
        # CI run lost a load published in that gap (the agent never received it; the cause is not found).
        wait_for(lambda: process.poll() is None and Host.objects.filter(name=name, last_heartbeat__isnull=False)
                 .exists() and f"{name}@" in log.read_text() and " ready." in log.read_text(), 60,
                 f"host {name} to beat and consume")
        yield


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as url:
        yield url


def ask(anvil: str, key: str, model: str) -> httpx.Response:
    return httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_a_hosts_serve_loads_on_its_queue_goes_unknown_when_it_stops_beating_and_comes_back(
        anvil: str, module_logs: Path) -> None:
    key = create_key(unique("hosts")).secret
    serve = scripted(unique("on-b"), host="hostb")
    try:
        with agent(module_logs, "hostb"):
            request_load(serve.name, {}, "test")
            wait_for(lambda: state_of(serve) == ModelState.LOADED, 60, "hostb's agent to load the serve")
            assert ServeEvent.objects.filter(serve=serve, state_after=ModelState.LOADED).exists()
            # No nvidia-smi here: the host reports the GPU it was told it has.
            assert Host.objects.get(name="hostb").gpus == [{"index": "0", "uuid": "", "total_mib": 24576,
                                                            "declared": True}]
            # A second agent of the same name would take the first one's tasks: it refuses to start.
            second = subprocess.run([sys.executable, str(ROOT / "manage.py"), "runhost", "hostb"], timeout=60,
                                    env=child_env(ANVIL_HOST_HEARTBEAT=BEAT), capture_output=True, text=True)
            assert second.returncode != 0 and "still beats" in second.stderr, second.stderr[-2000:]
            wait_for(lambda: ask(anvil, key, serve.name).status_code == 200, 10, "the serve to answer")
            watch_serves()  # the control host's watch: another machine's processes are not its to judge
            assert state_of(serve) == ModelState.LOADED
        # The agent is gone (killed with its process group; the engine runs in a session of its own).
        refused = wait_for(lambda: (r := ask(anvil, key, serve.name)).status_code == 503 and r, 10,
                           "the front door to notice the silent host")
        assert "host_silent" in refused.json()["error"]["message"], refused.text
        assert state_of(serve) == ModelState.LOADED  # the row is as it was: unknown is what the front door sees
        with agent(module_logs, "hostb"):
            wait_for(lambda: ask(anvil, key, serve.name).status_code == 200, 10, "the serve to answer again")
            assert ServeEvent.objects.filter(serve=serve, state_after=ModelState.LOADING).count() == 1  # no reload
    finally:
        do_unload(Serve.objects.get(pk=serve.pk).pk, "test")
