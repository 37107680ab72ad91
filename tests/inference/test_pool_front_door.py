"""The front door obeys model states: a model loading is a 503 ``model_loading`` with Retry-After, one not
loaded a 503 ``model_not_loaded`` in each dialect, /v1/models lists what is loaded, and an unload waits for
the stream in flight to finish before the engine stops."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import anthropic
import httpx
import pytest

from inference.keys import create_key
from serves.loading import do_load, do_unload
from serves.models import ModelState, Serve, ServeEvent
from serves.runtimes.process import PROCESSES
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCRIPTED = str(ROOT / "tests" / "support" / "scripted_upstream.py")


@pytest.fixture
def key() -> str:
    return create_key(f"pool-{uuid.uuid4().hex[:6]}").secret


def process_serve(name: str, *, startup_delay: float = 0, deltas: int = 8, delay_ms: float = 5) -> Serve:
    # A scripted engine that takes ``startup_delay`` seconds to listen: a model loading.
    start = (f"import runpy, sys, time; time.sleep({startup_delay}); "
             f"sys.argv = [{SCRIPTED!r}, '--port', sys.argv[1], '--deltas', '{deltas}', '--delay-ms', '{delay_ms}']; "
             f"runpy.run_path({SCRIPTED!r}, run_name='__main__')")
    return Serve.objects.create(name=name, tier="fast", runtime="process", port=free_port(), served_model="scripted",
                                command=[sys.executable, "-c", start, "{port}"], ready_timeout=60, drain_timeout=30)


def listed(anvil: str, key: str, every: bool = False) -> dict[str, str]:
    url = f"{anvil}/v1/models" + ("?all=true" if every else "")
    return {m["id"]: m["anvil"]["state"] for m in httpx.get(url, headers={"x-api-key": key}, timeout=5).json()["data"]}


def test_loading_then_loaded_then_unloaded_as_the_front_door_sees_it(anvil: str, key: str) -> None:
    serve = process_serve(f"slowstart-{uuid.uuid4().hex[:5]}", startup_delay=4)
    wait_for(lambda: listed(anvil, key, every=True).get(serve.name) == "unloaded", 10, "Anvil to see the serve")
    assert serve.name not in listed(anvil, key)  # the plain list holds loaded models only
    chat = {"model": serve.name, "messages": [{"role": "user", "content": "hi"}]}
    refused = httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, json=chat, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_loaded"
    assert f"serves load {serve.name}" in refused.json()["error"]["message"]
    loading = threading.Thread(target=do_load, args=(serve.pk, {}, "test"))
    loading.start()
    try:
        def loading_refused() -> httpx.Response | None:
            answer = httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, json=chat, timeout=10)
            return answer if answer.status_code == 503 and answer.json()["error"]["code"] == "model_loading" else None

        answer = wait_for(loading_refused, 4, "the front door to say the model is loading")
        assert answer.headers["retry-after"] == "5"
        client = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=10)
        with pytest.raises(anthropic.APIStatusError) as in_dialect:
            client.messages.create(model=serve.name, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert in_dialect.value.status_code == 503 and "is loading" in str(in_dialect.value)
    finally:
        loading.join(timeout=60)
    wait_for(lambda: listed(anvil, key).get(serve.name) == "loaded", 5, "the loaded model to be listed")
    answered = httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, json=chat, timeout=10)
    assert answered.status_code == 200 and answered.headers["x-anvil-served-by"] == serve.name
    do_unload(serve.pk, "test")
    wait_for(lambda: serve.name not in listed(anvil, key), 5, "the unloaded model to leave the list")


def test_an_unload_waits_for_the_stream_in_flight_to_finish(anvil: str, key: str) -> None:
    serve = process_serve(f"drain-{uuid.uuid4().hex[:5]}", deltas=20, delay_ms=150)  # a 3 s answer
    assert do_load(serve.pk, {}, "test").outcome == "ok"
    wait_for(lambda: listed(anvil, key).get(serve.name) == "loaded", 5, "the loaded model to be listed")
    tokens: list[str] = []
    ended = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=30,
                          json={"model": serve.name, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as response:
            for line in response.iter_lines():
                if '"content": "tok' in line:
                    tokens.append(line)
                elif line == "data: [DONE]":
                    ended.set()

    reader = threading.Thread(target=stream)
    reader.start()
    wait_for(lambda: len(tokens) >= 2, 10, "the stream to be under way")
    started = time.monotonic()
    result = do_unload(serve.pk, "test")
    reader.join(timeout=30)
    assert result.outcome == "ok" and ended.is_set() and len(tokens) == 20  # every token, then [DONE]
    assert time.monotonic() - started > 1.5  # the unload waited for the stream's remaining ~2.5 s
    serve.refresh_from_db()
    assert serve.model_state == ModelState.UNLOADED and PROCESSES.record(serve) is None
    assert list(ServeEvent.objects.filter(serve=serve).order_by("pk").values_list("state_after", flat=True))[-2:] \
        == ["unloading", "unloaded"]
