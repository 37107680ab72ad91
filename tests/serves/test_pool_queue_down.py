"""A load or unload the task queue cannot take: the admin API says so at once (503, in the OpenAI error
shape) and puts the model state back, so no serve reads ``loading`` for a load nobody will run."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from anvil_site.launcher import embedded_redis_spec, redis_answers
from inference.keys import create_key
from serves.models import ModelState, Serve, ServeEvent
from tests.support.live import live_anvil
from tests.support.processes import free_port, running
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_load_the_queue_cannot_take_is_a_503_and_the_state_is_put_back(tmp_path: Path, logs_dir: Path) -> None:
    serve = Serve.objects.create(name="unqueued", tier="fast", runtime="process", port=free_port(),
                                 served_model="m", command=[sys.executable, "-c", "pass"])
    loaded = Serve.objects.create(name="stays-loaded", tier="fast", runtime="process", port=free_port(),
                                  served_model="m2", command=[sys.executable, "-c", "pass"],
                                  model_state=ModelState.LOADED)
    admin = {"authorization": f"Bearer {create_key('queue-admin', ['admin']).secret}"}
    socket_path, data_dir = tmp_path / "r.sock", tmp_path / "redis-data"
    data_dir.mkdir()
    url = f"unix://{socket_path}"
    with ExitStack() as redis_server:
        redis_server.enter_context(running(embedded_redis_spec(socket_path, data_dir).argv, {},
                                           logs_dir / "redis.log"))
        wait_for(lambda: redis_answers(url), 15, "the private Redis")
        with live_anvil(logs_dir, REDIS_URL=url) as anvil:
            redis_server.close()  # the broker goes away; the web process stays up
            wait_for(lambda: not redis_answers(url), 15, "Redis to be gone")
            started = time.monotonic()
            answer = httpx.post(f"{anvil}/v1/admin/models/{serve.name}/load", headers=admin, timeout=60)
            took = time.monotonic() - started
            unload = httpx.post(f"{anvil}/v1/admin/models/{loaded.name}/unload", headers=admin, timeout=60)
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "queue_unavailable" and "nothing changed" in error["message"]
    assert answer.headers["retry-after"] == "5"
    assert took < 15  # a few quick retries, not Celery's twenty one-second ones
    serve.refresh_from_db()
    assert serve.model_state == ModelState.UNLOADED
    events = list(ServeEvent.objects.filter(serve=serve).order_by("pk"))
    assert [e.state_after for e in events] == ["loading", "unloaded"]
    assert events[-1].outcome == "failed" and events[-1].detail.startswith("not queued")
    # An unload that could not be queued leaves the model loaded (and serving), not "unloading".
    assert unload.status_code == 503
    loaded.refresh_from_db()
    assert loaded.model_state == ModelState.LOADED
