"""The serves' queues live in Redis. When Redis stops answering, a loaded serve's requests go on without
their queue (its limit and fair share are off until Redis is back, as the breakers fall back to each
process's own), and a request that would have to wait for a load is told so in its dialect: never a 500."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from anvil_site.launcher import embedded_redis_spec, redis_answers
from inference.keys import create_key
from serves.models import Serve
from tests.support.live import live_anvil, scripted_upstream
from tests.support.processes import free_port, running
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_redis_gone_a_loaded_serve_still_answers_and_a_load_to_wait_for_is_a_503(tmp_path: Path,
                                                                                   logs_dir: Path) -> None:
    key = {"x-api-key": create_key("queue-redis-down").secret}
    socket_path, data_dir = tmp_path / "r.sock", tmp_path / "redis-data"
    data_dir.mkdir()
    url = f"unix://{socket_path}"
    with ExitStack() as stack:
        upstream = stack.enter_context(scripted_upstream(logs_dir))
        Serve.objects.create(name="limited", tier="fast", base_url=f"{upstream}/v1", served_model="scripted",
                             target_inflight=1)
        Serve.objects.create(name="cold", tier="fast", runtime="process", port=free_port(), served_model="m",
                             command=[sys.executable, "-c", "pass"], on_demand=True)
        redis_server = stack.enter_context(ExitStack())
        redis_server.enter_context(running(embedded_redis_spec(socket_path, data_dir).argv, {},
                                           logs_dir / "redis.log"))
        wait_for(lambda: redis_answers(url), 15, "the private Redis")
        anvil = stack.enter_context(live_anvil(logs_dir, REDIS_URL=url))

        def ask(model: str) -> httpx.Response:
            return httpx.post(f"{anvil}/v1/chat/completions", headers=key, json={"model": model, **CHAT}, timeout=60)

        assert ask("limited").status_code == 200  # through its queue
        redis_server.close()
        wait_for(lambda: not redis_answers(url), 15, "Redis to be gone")
        answered = [ask("limited") for _ in range(3)]
        assert [a.status_code for a in answered] == [200, 200, 200], answered[-1].text
        refused = ask("cold")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_unavailable"
        log = next(logs_dir.glob("anvil-*.log")).read_text()
    assert log.count("serve queues: Redis does not answer") == 1  # said once, not per request
    assert "Traceback" not in log
