"""A model's replicas through the front door, with real processes (Anvil under Daphne, a Celery worker that
loads, scripted engines as ``process`` serves sharing an alias):

* requests are balanced by load (in flight and waiting, across the web processes); a dead replica fails over;
* a queue that stays deep loads another on-demand replica (``replica_max``), which then takes new requests;
  the extra stops after its ``ttl`` idle, and the model never goes below its ``replicas``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from inference.keys import create_key
from serves.loading import do_load
from serves.models import ModelState, ServeEvent
from serves.runtimes.process import PROCESSES
from serves.tasks import watch_serves
from tests.inference.test_pool_queues import scripted, state_of, stop, unique
from tests.support.celery_worker import celery_worker
from tests.support.live import live_anvil
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    with celery_worker(module_logs), live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2",
                                                ANVIL_MAX_CONCURRENCY_PER_KEY="64") as url:
        yield url


@pytest.fixture
def key() -> str:
    return create_key(unique("replicas")).secret


class Asker:
    """Streams requests for one model, counting which replica served each."""

    def __init__(self, anvil: str, key: str, model: str) -> None:
        self.anvil, self.key, self.model = anvil, key, model
        self.served: Counter[str] = Counter()
        self.lock = threading.Lock()

    def ask(self) -> str:
        chat = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{self.anvil}/v1/chat/completions", headers={"x-api-key": self.key}, json=chat,
                          timeout=120) as response:
            assert response.status_code == 200
            by = response.headers["x-anvil-served-by"]
            assert sum('"content": "tok' in line for line in response.iter_lines()) > 0
        with self.lock:
            self.served[by] += 1
        return by

    def wave(self, count: int, spacing: float) -> Counter[str]:
        """``count`` requests, started ``spacing`` apart (each sees the others' counts); who served them."""
        before = Counter(self.served)
        with ThreadPoolExecutor(count) as pool:
            futures = []
            for _ in range(count):
                futures.append(pool.submit(self.ask))
                time.sleep(spacing)
            for future in futures:
                future.result()
        return self.served - before


def test_replicas_are_balanced_by_load_and_a_dead_one_fails_over(anvil: str, key: str) -> None:
    alias = unique("twin")
    replicas = [scripted(f"{alias}-{n}", deltas=10, delay_ms=100, alias=alias) for n in (1, 2)]
    for replica in replicas:
        assert do_load(replica.pk, {}, "test").outcome == "ok"
    try:
        served = Asker(anvil, key, alias).wave(8, spacing=0.15)
        assert set(served) == {r.name for r in replicas}, served
        assert abs(served[replicas[0].name] - served[replicas[1].name]) <= 2, served
        # One replica dies: its model's requests go to the other.
        record = PROCESSES.record(replicas[0])
        assert record is not None
        os.killpg(record.pid, signal.SIGKILL)
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
        for _ in range(3):
            answer = client.chat.completions.with_raw_response.create(
                model=alias, messages=[{"role": "user", "content": "hi"}])
            assert answer.headers["x-anvil-served-by"] == replicas[1].name
            assert answer.parse().model == alias
    finally:
        stop(*replicas)


def test_a_deep_queue_loads_another_replica_and_the_extra_stops_after_its_ttl(anvil: str, key: str) -> None:
    alias = unique("scaled")
    # Each request streams for ~1 s, one at a time per replica; at most two loaded; one kept loaded.
    first, second = (scripted(f"{alias}-{n}", deltas=10, delay_ms=100, alias=alias, on_demand=True,
                              target_inflight=1, ttl=3, replicas=1, replica_max=2) for n in (1, 2))
    asker = Asker(anvil, key, alias)
    try:
        assert do_load(first.pk, {}, "test").outcome == "ok"
        watch_serves()
        assert state_of(second) == ModelState.UNLOADED  # one loaded is enough while nothing waits
        flood = threading.Thread(target=asker.wave, args=(6, 0.05))
        flood.start()
        wait_for(lambda: watch_serves() is not None and state_of(second) != ModelState.UNLOADED, 30,
                 "a deep queue to load the second replica")
        loaded_by = ServeEvent.objects.filter(serve=second,
                                              state_after=ModelState.LOADING).latest("started_at").requested_by
        assert loaded_by.startswith(f"scale-out: a request for {alias} waited"), loaded_by
        wait_for(lambda: state_of(second) == ModelState.LOADED, 60, "the second replica to load")
        flood.join(120)
        assert sum(asker.served.values()) == 6
        # Loaded, the second replica takes its share of new requests.
        served = asker.wave(4, spacing=0.15)
        assert set(served) == {first.name, second.name}, served
        # Idle: the extra stops after its ttl; the model keeps one replica (replicas = 1).
        wait_for(lambda: watch_serves() is not None
                 and [state_of(first), state_of(second)].count(ModelState.LOADED) == 1, 30,
                 "the extra replica to stop after its ttl")
        quiet = time.monotonic()
        while time.monotonic() - quiet < 5:  # past the ttl again: the last one stays
            watch_serves()
            time.sleep(0.5)
        assert [state_of(first), state_of(second)].count(ModelState.LOADED) == 1
        assert ModelState.LOADING not in (state_of(first), state_of(second))  # nothing waits: no scale-out
    finally:
        stop(first, second)
