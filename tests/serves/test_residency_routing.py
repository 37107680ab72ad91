"""Residency reaches routing: a serve brought up (or found running by the status sweep) is ordered first
within its tier by Anvil's web process, within the serve sync interval. Real Docker, real Compose,
Anvil under Daphne."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from inference.keys import create_key
from serves.actions import do_lifecycle
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


def test_a_serve_brought_up_is_routed_first_within_the_sync_interval(
        anvil: str, docker_engine: docker.DockerClient, compose_serve) -> None:  # type: ignore[no-untyped-def]
    compose_serve(name="a-cold")
    warm, project = compose_serve(name="b-warm")
    key = create_key("residency").secret
    # Neither is running (state unknown): within the tier, by name.
    wait_for(lambda: routed_first(anvil, key) == "a-cold", 10, "Anvil to route both serves, by name")

    assert do_lifecycle(warm.pk, "up", "test").outcome == "ok"  # what `serves up` and the admin run
    wait_for(lambda: routed_first(anvil, key) == "b-warm", SHOWS_WITHIN, "the serve brought up to be routed first")

    assert do_lifecycle(warm.pk, "down", "test").outcome == "ok"
    wait_for(lambda: routed_first(anvil, key) == "a-cold", SHOWS_WITHIN, "the stopped serve to lose its place")

    # Started behind Anvil's back: the status sweep finds it running, and routing follows.
    docker_engine.containers.get(project.container).start()
    sweep_status()
    wait_for(lambda: routed_first(anvil, key) == "b-warm", SHOWS_WITHIN, "the swept serve to be routed first")
