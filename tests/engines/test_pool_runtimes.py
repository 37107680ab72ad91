"""Real engines as ``process`` serves that Anvil loads: the states a load walks, what the front door
answers meanwhile, a live override the engine obeys, unloads that leave nothing, a bad model's log, and
a Celery worker killed in the middle of a load."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from inference.keys import create_key
from serves.loading import do_load
from serves.models import LoadError, ModelState, Serve, ServeEvent
from serves.runtimes.process import PROCESSES
from tests.support.celery_worker import celery_worker
from tests.support.engines import built_layout
from tests.support.processes import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def llama_cpp_serve(name: str, **fields: Any) -> Serve:
    layout = built_layout()
    args = {"python": str(layout.python(layout.llama_cpp_venv)), "model": str(layout.gguf_model), "ctx_size": 1024,
            "n_threads": 1, **fields.pop("preset_args", {})}
    return Serve.objects.create(name=name, tier="fast", engine="openai", runtime="process", preset="llama_cpp",
                                port=free_port(), served_model=name, preset_args=args, ready_timeout=120,
                                supports_tools=False, **fields)


def keepers_of(serve: Serve) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(part.endswith("process_keeper.py") for part in cmdline) and serve.name in cmdline:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def admin_state(anvil: str, admin: dict[str, str], name: str) -> dict[str, Any]:
    rows = httpx.get(f"{anvil}/v1/admin/models", headers=admin, timeout=10).json()["data"]
    return next(row for row in rows if row["id"] == name)


def test_a_load_walks_the_states_the_front_door_waits_for_loaded_and_an_unload_leaves_nothing(
        anvil: str, key: str, logs_dir: Path) -> None:
    serve = llama_cpp_serve(f"llama-{uuid.uuid4().hex[:5]}")
    admin = {"Authorization": f"Bearer {create_key('pool-admin', ['admin']).secret}"}
    chat = {"model": serve.name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    auth = {"Authorization": f"Bearer {key}"}
    with celery_worker(logs_dir):
        assert httpx.post(f"{anvil}/v1/admin/models/{serve.name}/load", headers=auth, timeout=10).status_code == 403
        started = httpx.post(f"{anvil}/v1/admin/models/{serve.name}/load", headers=admin, timeout=10)
        assert started.status_code == 202 and started.json()["state"] == "loading"
        early = httpx.post(f"{anvil}/v1/chat/completions", headers=auth, json=chat, timeout=10)
        assert early.status_code == 503, early.text
        assert early.json()["error"]["code"] in ("model_loading", "model_not_loaded")
        wait_for(lambda: admin_state(anvil, admin, serve.name)["state"] == "loaded", 120, "the load to finish")
        answered = wait_for(lambda: (r := httpx.post(f"{anvil}/v1/chat/completions", headers=auth, json=chat,
                                                       timeout=30)).status_code == 200 and r, 10,
                            "the front door to answer once loaded")
        assert answered.headers["x-anvil-served-by"] == serve.name
        assert list(ServeEvent.objects.filter(serve=serve).order_by("pk").values_list("state_after", flat=True)) \
            == ["loading", "loaded"]
        [keeper] = keepers_of(serve)
        group = [keeper, *keeper.children(recursive=True)]
        assert httpx.post(f"{anvil}/v1/admin/models/{serve.name}/unload", headers=admin, timeout=10).status_code == 202
        wait_for(lambda: admin_state(anvil, admin, serve.name)["state"] == "unloaded", 60, "the unload to finish")
    assert not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # nothing left behind

    def refused() -> bool:  # the web process sees the new state within a second (the Redis mirror)
        answer = httpx.post(f"{anvil}/v1/chat/completions", headers=auth, json=chat, timeout=10)
        return answer.status_code == 503 and answer.json()["error"]["code"] == "model_not_loaded"

    wait_for(refused, 5, "the front door to refuse the unloaded model")


def test_a_live_override_of_max_model_len_shows_in_vllms_own_models() -> None:
    layout = built_layout()
    serve = Serve.objects.create(
        name=f"vllm-{uuid.uuid4().hex[:5]}", tier="fast", engine="vllm", runtime="process", preset="vllm",
        port=free_port(), served_model="tiny-vllm-process", ready_timeout=480,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        preset_args={"python": str(layout.python(layout.vllm_venv)), "model": str(layout.hf_model),
                     "dtype": "float32", "max_model_len": 1024, "enforce_eager": True},
        load_constraints={"max_model_len": {"min": 256, "max": 1024}})
    try:
        result = do_load(serve.pk, {"max_model_len": 512}, "test")
        assert result.outcome == "ok", result.output_tail
        models = httpx.get(f"http://127.0.0.1:{serve.port}/v1/models", timeout=10).json()["data"]
        assert models[0]["max_model_len"] == 512  # the row still says 1024: the override is live only
        serve.refresh_from_db()
        assert serve.preset_args["max_model_len"] == 1024 and serve.live_overrides == {"max_model_len": 512}
        [keeper] = keepers_of(serve)
        group = [keeper, *keeper.children(recursive=True)]
    finally:
        PROCESSES.stop(serve)
    assert not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_bad_model_path_fails_with_the_engines_own_words() -> None:
    serve = llama_cpp_serve(f"nomodel-{uuid.uuid4().hex[:5]}", preset_args={"model": "/models/not-there.gguf"})
    result = do_load(serve.pk, {}, "test")
    serve.refresh_from_db()
    assert result.outcome == "failed" and serve.model_state == ModelState.FAILED
    assert serve.load_error == LoadError.EXITED and "not-there.gguf" in serve.last_error
