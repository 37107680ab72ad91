"""The models page lists the host agents: beating or silent (their Redis beat, as the front door reads it), the
GPUs each reported or was told of, and the serves loaded on it; a host a serve names that never beat shows too."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from serves.hosts import heartbeat_key
from serves.models import Host, ModelState, Serve
from tests.evals.console import operator_client

pytestmark = pytest.mark.django_db(transaction=True)


def row(page: str, host: str) -> str:
    found = re.search(rf'<tr data-host="{host}">(.*?)</tr>', page, re.S)
    assert found, f"no row for host {host}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()


def test_the_models_page_shows_each_hosts_beat_gpus_and_loaded_serves() -> None:
    beating, typo = f"gpu-{uuid.uuid4().hex[:5]}", f"gpu-{uuid.uuid4().hex[:5]}"
    Host.objects.create(name=beating, gpus=[{"index": "0", "uuid": "", "total_mib": 24576, "declared": True}],
                        last_heartbeat=timezone.now(), pid=4242)
    Serve.objects.create(name=f"on-{beating}", tier="fast", runtime="process", port=1, command=["true"],
                         served_model="m", host=beating, model_state=ModelState.LOADED)
    Serve.objects.create(name=f"on-{typo}", tier="fast", runtime="process", port=2, command=["true"],
                         served_model="m", host=typo)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(heartbeat_key(beating), json.dumps({"at": time.time(), "pid": 4242}), px=30_000)
    try:
        page = operator_client().get("/").content.decode()
    finally:
        client.delete(heartbeat_key(beating))
        client.close()
    assert row(page, beating).startswith(f"{beating} beating")
    assert "0: 24576 MiB (declared)" in row(page, beating) and f"on-{beating}" in row(page, beating)
    assert row(page, typo) == f"{typo} silent never none reported nothing"
