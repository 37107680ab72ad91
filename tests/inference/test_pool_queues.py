"""The pool through the front door, with real processes: Anvil under Daphne, a real Celery worker running
loads, scripted engines as ``process`` serves (they take seconds to start, like a model loading).

* A serve loaded on demand is loaded by the first request for it; a stream waiting for the load gets
  SSE heartbeats and then every token; a load that fails ends the wait with its error code.
* ``ttl`` counts from the last request, not from the load.
* ``target_inflight`` and ``max_queue``: a full queue is a 429 ``model_queue_full`` with Retry-After in
  both SDKs' dialects.
* A flooding key does not starve a light one on a serve with ``target_inflight = 1``.
* A model named whose serve is dead is a 503 ``model_unavailable``, never another model's answer.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from serves.loading import do_load, do_unload
from serves.models import ModelState, Serve
from serves.tasks import watch_serves
from tests.support.celery_worker import celery_worker
from tests.support.live import live_anvil
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCRIPTED = str(ROOT / "tests" / "support" / "scripted_upstream.py")
HEARTBEAT = 1.0


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    with celery_worker(module_logs), live_anvil(
            module_logs, ANVIL_QUEUE_HEARTBEAT=str(HEARTBEAT), ANVIL_SERVE_SYNC_INTERVAL="0.2",
            ANVIL_MAX_CONCURRENCY_PER_KEY="64") as url:
        yield url


@pytest.fixture
def key() -> str:
    return create_key(f"pool-{uuid.uuid4().hex[:6]}").secret


@pytest.fixture
def admin() -> str:
    return create_key(f"admin-{uuid.uuid4().hex[:6]}", ["admin"]).secret


def scripted(name: str, *, startup_delay: float = 0, deltas: int = 8, delay_ms: float = 5, **fields: object) -> Serve:
    """A process serve running the scripted engine, listening after ``startup_delay`` s (a model loading)."""
    start = (f"import runpy, sys, time; time.sleep({startup_delay}); "
             f"sys.argv = [{SCRIPTED!r}, '--port', sys.argv[1], '--deltas', '{deltas}', '--delay-ms', '{delay_ms}']; "
             f"runpy.run_path({SCRIPTED!r}, run_name='__main__')")
    return Serve.objects.create(name=name, tier="fast", runtime="process", port=free_port(), served_model="scripted",
                                command=[sys.executable, "-c", start, "{port}"], ready_timeout=60, drain_timeout=10,
                                **fields)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def state_of(serve: Serve) -> str:
    return Serve.objects.get(pk=serve.pk).model_state


def stop(*serves: Serve) -> None:
    for serve in serves:
        do_unload(serve.pk, "test")


def test_a_stream_for_a_model_loaded_on_demand_gets_heartbeats_then_every_token(anvil: str, key: str) -> None:
    serve = scripted(unique("ondemand"), startup_delay=3, deltas=6, on_demand=True)
    try:
        beats, tokens, first_token_at = 0, [], None
        started = time.monotonic()
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=60, json={
                "model": serve.name, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line == ": keep-alive":
                    beats += 1
                    assert first_token_at is None  # heartbeats only before the answer
                elif '"content": "tok' in line:
                    first_token_at = first_token_at or time.monotonic()
                    tokens.append(line)
        assert first_token_at is not None and first_token_at - started >= 2.5  # it waited for the load
        assert beats >= 2 and len(tokens) == 6, (beats, tokens)
        assert state_of(serve) == ModelState.LOADED
        # Loaded now: the next request goes straight through (no load, no heartbeat).
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=10)
        answer = client.chat.completions.create(model=serve.name, messages=[{"role": "user", "content": "hi"}])
        assert answer.model == serve.name and answer.choices[0].message.content
    finally:
        stop(serve)


def test_a_failed_on_demand_load_is_an_error_carrying_its_code_in_both_dialects(anvil: str, key: str) -> None:
    broken = Serve.objects.create(name=unique("broken"), tier="fast", runtime="process", port=free_port(),
                                  served_model="m", command=[sys.executable, "-c", "import sys; sys.exit(3)"],
                                  ready_timeout=30, on_demand=True)
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=broken.name, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503 and failed.value.body["code"] == "exited"  # type: ignore[index]
    assert "could not be loaded (exited)" in failed.value.message
    messages = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30)
    with pytest.raises(anthropic.APIStatusError) as in_dialect:
        messages.messages.create(model=broken.name, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert in_dialect.value.status_code == 503 and "could not be loaded (" in str(in_dialect.value)


def test_ttl_counts_from_the_last_request_not_from_the_load(anvil: str, key: str) -> None:
    serve = scripted(unique("ttl"), on_demand=True, ttl=3)
    chat = {"model": serve.name, "messages": [{"role": "user", "content": "hi"}]}

    def ask() -> None:
        assert httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, json=chat,
                          timeout=60).status_code == 200

    try:
        ask()  # loads it
        loaded_at = last = time.monotonic()
        while time.monotonic() - loaded_at < 4.5:  # past the ttl from the load, with a request every second
            ask()
            last = time.monotonic()
            watch_serves()  # what beat runs every 3 s
            assert state_of(serve) == ModelState.LOADED
            time.sleep(1.0)
        wait_for(lambda: watch_serves() is not None and state_of(serve) != ModelState.LOADED, 15,
                 "the idle serve to be unloaded")
        assert time.monotonic() - last >= 2.5  # not before its ttl since the last request
        wait_for(lambda: state_of(serve) == ModelState.UNLOADED, 20, "the unload to end")
    finally:
        stop(serve)


def test_a_full_queue_is_a_429_with_retry_after_in_both_dialects(anvil: str, key: str, admin: str) -> None:
    serve = scripted(unique("narrow"), deltas=20, delay_ms=150, target_inflight=1, max_queue=1)
    assert do_load(serve.pk, {}, "test").outcome == "ok"
    body = {"model": serve.name, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    holding = threading.Event()

    def slow() -> int:
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, json=body,
                          timeout=60) as response:
            for line in response.iter_lines():
                if '"content"' in line:
                    holding.set()
            return response.status_code

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(slow)
            wait_for(holding.is_set, 20, "the first stream to hold the only slot")
            second = pool.submit(slow)
            wait_for(lambda: queue_depth(anvil, admin, serve.name) == 1, 10, "the second request to wait")
            client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=10)
            with pytest.raises(openai.RateLimitError) as full:
                client.chat.completions.create(model=serve.name, messages=[{"role": "user", "content": "hi"}])
            assert full.value.body["code"] == "model_queue_full"  # type: ignore[index]
            assert full.value.response.headers["retry-after"] == "2"
            messages = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=10)
            with pytest.raises(anthropic.RateLimitError) as in_dialect:
                messages.messages.create(model=serve.name, max_tokens=8,
                                         messages=[{"role": "user", "content": "hi"}])
            assert in_dialect.value.response.headers["retry-after"] == "2"
            assert first.result() == 200 and second.result() == 200  # the one that waited is answered
    finally:
        stop(serve)


def queue_depth(anvil: str, admin: str, name: str) -> int:
    models = httpx.get(f"{anvil}/v1/admin/models", headers={"x-api-key": admin}, timeout=10).json()["data"]
    return next(model["queue_depth"] for model in models if model["id"] == name)


def test_a_flooding_key_does_not_starve_a_light_one(anvil: str, admin: str) -> None:
    serve = scripted(unique("shared"), deltas=3, delay_ms=100, target_inflight=1, max_queue=200)
    assert do_load(serve.pk, {}, "test").outcome == "ok"
    flood, light = create_key(unique("flood")).secret, create_key(unique("light")).secret
    chat = {"model": serve.name, "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    def ask(secret: str) -> float:
        started = time.monotonic()
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"x-api-key": secret}, json=chat,
                          timeout=120) as answer:
            assert answer.status_code == 200
            lines = list(answer.iter_lines())
        assert "data: [DONE]" in lines
        return time.monotonic() - started

    try:
        with ThreadPoolExecutor(24) as pool:
            flooding = [pool.submit(ask, flood) for _ in range(20)]
            wait_for(lambda: queue_depth(anvil, admin, serve.name) >= 10, 20, "the flood to queue up")
            light_waits = [ask(light) for _ in range(3)]
            flood_waits = [f.result() for f in flooding]
        # Each answer takes ~0.3 s: the light key waits about one answer, not the flood's backlog of ~6 s.
        assert max(light_waits) < 1.5, (light_waits, sorted(flood_waits))
        assert max(flood_waits) > 3.0  # the flood really was queued behind itself, one at a time
    finally:
        stop(serve)


def test_a_named_model_whose_serve_is_dead_is_a_503_model_unavailable(anvil: str, key: str) -> None:
    dead = Serve.objects.create(name=unique("ghost"), tier="fast", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                served_model="g")
    alive = scripted(unique("alive"))
    assert do_load(alive.pk, {}, "test").outcome == "ok"
    try:
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
        wait_for(lambda: client.chat.completions.create(
            model=alive.name, messages=[{"role": "user", "content": "hi"}]).model == alive.name, 10,
            "Anvil to route to the live serve")
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=dead.name, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503 and refused.value.body["code"] == "model_unavailable"  # type: ignore[index]
        assert alive.name not in refused.value.message
        messages = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30)
        with pytest.raises(anthropic.APIStatusError) as in_dialect:
            messages.messages.create(model=dead.name, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert in_dialect.value.status_code == 503 and "is unavailable" in str(in_dialect.value)
    finally:
        stop(alive)
