"""Swaps on one GPU with room for one model, with real processes (Anvil under Daphne, a Celery worker that
loads, scripted engines as on-demand ``process`` serves that each declare most of the device):

* a stream to the resident model finishes intact (every token, no reset) while a request for the other
  waits; then the swap happens and the waiting request is answered;
* twenty requests alternating between the two models cost a handful of swaps, not twenty (the load that
  would evict a model its requests still want waits for ``min_residency``), and none waits past ``max_wait``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from inference.keys import create_key
from serves.loading import do_unload
from serves.models import Gpu, ModelState, Serve, ServeEvent
from tests.inference.test_pool_queues import scripted
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
    return create_key(f"swap-{uuid.uuid4().hex[:6]}").secret


def pair(gpu: str, **fields: object) -> tuple[Serve, Serve]:
    tag = uuid.uuid4().hex[:5]
    return tuple(scripted(f"{name}-{tag}", on_demand=True, gpu=gpu, vram_gb=6, **fields)  # type: ignore[return-value]
                 for name in ("a", "b"))


def evictions(serve: Serve) -> int:
    return ServeEvent.objects.filter(serve=serve, state_after=ModelState.UNLOADING,
                                     requested_by__startswith="evicted for").count()


def test_a_stream_survives_the_swap_that_its_model_is_evicted_by(anvil: str, key: str) -> None:
    gpu = f"gpu-{uuid.uuid4().hex[:4]}"
    Gpu.objects.create(name=gpu, memory_gb=10, min_residency=0, max_wait=60)
    a, b = pair(gpu, deltas=20, delay_ms=150)
    tokens: list[str] = []
    ended = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=60,
                          json={"model": a.name, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as response:
            for line in response.iter_lines():
                if '"content": "tok' in line:
                    tokens.append(line)
                elif line == "data: [DONE]":
                    ended.set()

    try:
        reader = threading.Thread(target=stream)
        reader.start()  # loads a on demand, then streams for ~3 s
        wait_for(lambda: len(tokens) >= 2, 60, "a's stream to be under way")
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=60)
        asked = time.monotonic()
        answer = client.chat.completions.create(model=b.name, messages=[{"role": "user", "content": "hi"}])
        reader.join(timeout=30)
        assert ended.is_set() and len(tokens) == 20  # every token of a's answer, then [DONE]
        assert answer.model == b.name and answer.choices[0].message.content
        assert time.monotonic() - asked > 1.5  # b waited for a's stream to drain, not cut it
        assert Serve.objects.get(pk=a.pk).model_state == ModelState.UNLOADED and evictions(a) == 1
        assert Serve.objects.get(pk=b.pk).model_state == ModelState.LOADED
        metrics = httpx.get(f"{anvil}/metrics", timeout=10).text
        assert f'anvil_swaps_total{{serve="{b.name}"}} 1.0' in metrics
        ledger = httpx.get(f"{anvil}/v1/admin/gpu-memory", timeout=10, headers={
            "x-api-key": create_key(f"adm-{uuid.uuid4().hex[:5]}", ["admin"]).secret}).json()
        device = next(d for d in ledger["devices"] if d["id"] == gpu)
        assert [r["id"] for r in device["residents"]] == [b.name] and device["free_gb"] == 4
        # POST /v1/route says what asking for a now would do.
        plan = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=10, json={
            "model": a.name, "messages": [{"role": "user", "content": "hi"}]}).json()
        assert plan["pool_plan"] == f"would load {a.name} on GPU {gpu}, evicting {b.name}", plan
    finally:
        for serve in (a, b):
            do_unload(serve.pk, "test")


def test_alternating_requests_are_batched_per_model_and_none_waits_past_max_wait(anvil: str, key: str) -> None:
    gpu = f"gpu-{uuid.uuid4().hex[:4]}"
    Gpu.objects.create(name=gpu, memory_gb=10, min_residency=3, max_wait=20)
    a, b = pair(gpu, deltas=3, delay_ms=50)
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=120)

    def ask(model: str) -> tuple[str, float]:
        started = time.monotonic()
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return answer.model, time.monotonic() - started

    try:
        with ThreadPoolExecutor(20) as pool:
            futures = []
            for index in range(20):
                futures.append(pool.submit(ask, (a, b)[index % 2].name))
                time.sleep(0.1)
            results = [f.result() for f in futures]
        assert sorted(model for model, _ in results) == sorted([a.name] * 10 + [b.name] * 10)
        swaps = evictions(a) + evictions(b)
        assert 1 <= swaps <= 5, swaps  # a handful, not one per alternation (19 without batching)
        # The longest wait: a model's load, the other's min_residency, its own load; never past max_wait.
        assert max(waited for _, waited in results) < 20, results
    finally:
        for serve in (a, b):
            do_unload(serve.pk, "test")
