"""A task goes through the real broker to a real worker process and its result comes back."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from anvil_site.tasks import ping
from tests.support.celery_worker import celery_worker


@pytest.mark.slow
def test_a_task_round_trips_through_a_real_broker_and_worker(logs_dir: Path) -> None:
    token = uuid.uuid4().hex
    with celery_worker(logs_dir):
        result = ping.delay(token).get(timeout=30)
    assert result["token"] == token
    assert result["pid"] != os.getpid()  # answered by another process, not run eagerly here


def test_tasks_are_never_run_eagerly(settings: object) -> None:
    from anvil_site.celery import app

    assert app.conf.task_always_eager is False
    assert app.conf.task_serializer == "json"
    assert app.conf.task_time_limit and app.conf.task_soft_time_limit
