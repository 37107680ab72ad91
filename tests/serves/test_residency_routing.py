"""Residency reaches routing: only a loaded serve is routed, and a container brought up (or found running
by the status sweep) is loaded and routed by Anvil's web process within about a second; one brought down
is not. Real Docker, real Compose, Anvil under Daphne."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from inference.keys import create_key
from serves.actions import do_lifecycle
from serves.loading import watch
from serves.models import ModelState, Serve
from serves.tasks import sweep_status
from tests.support.live import live_anvil
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SYNC_INTERVAL = 1.0
# The snapshot checks the table at most once per interval, in the background: a change shows within
# about one interval, plus a request or two; the rest is room for a loaded machine.
SHOWS_WITHIN = SYNC_INTERVAL + 4


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL=str(SYNC_INTERVAL)) as url:
        yield url


def routed_first(anvil: str, key: str) -> str:
    decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5, json={
        "model": "auto", "messages": [{"role": "user", "content": "hi"}]}).json()
    return (decision.get("candidates") or [{}])[0].get("serve", "")


def loaded_by_the_watch(serve_id: int) -> bool:
    """What beat runs every 3 s: a container still starting after `up` is loaded once it answers."""
    watch()
    return Serve.objects.get(pk=serve_id).model_state == ModelState.LOADED


def test_a_serve_brought_up_is_routed_first_within_the_sync_interval(
        anvil: str, docker_engine: docker.DockerClient, compose_serve) -> None:  # type: ignore[no-untyped-def]
    compose_serve(name="a-cold")
    warm, project = compose_serve(name="b-warm")
    key = create_key("residency").secret
    # Neither is running: neither is loaded, and nothing is routed.
    wait_for(lambda: routed_first(anvil, key) == "", 10, "Anvil to see both serves unloaded")
    assert do_lifecycle(warm.pk, "up", "test").outcome == "ok"  # what `serves up` and the admin run
    wait_for(lambda: loaded_by_the_watch(warm.pk), 30, "the container to answer")
    wait_for(lambda: routed_first(anvil, key) == "b-warm", SHOWS_WITHIN, "the serve brought up to be routed first")
    assert do_lifecycle(warm.pk, "down", "test").outcome == "ok"
    wait_for(lambda: routed_first(anvil, key) == "", SHOWS_WITHIN, "the stopped serve to lose its place")
    # Started behind Anvil's back: the status sweep finds it running and answering, and routing follows.
    docker_engine.containers.get(project.container).start()
    wait_for(lambda: sweep_status() and Serve.objects.get(pk=warm.pk).model_state == ModelState.LOADED, 30,
             "the sweep to find it loaded")
    wait_for(lambda: routed_first(anvil, key) == "b-warm", SHOWS_WITHIN, "the swept serve to be routed first")
