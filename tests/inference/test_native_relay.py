"""/generate and /loglikelihood through the front door to a real HRM worker registered as an hrm serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inference.keys import create_key
from serves.inference_workers import register_worker
from serves.models import Serve
from tests.support.live import hrm_worker
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def worker_port(module_logs: Path) -> Iterator[int]:
    with hrm_worker(module_logs) as (port, _process):
        yield port


@pytest.fixture
def key() -> str:
    return create_key("native-tests").secret


def _post(anvil: str, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{anvil}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_no_hrm_serve_is_a_503_in_the_native_shape(anvil: str, key: str) -> None:
    answer = _post(anvil, key, "/generate", {"prompts": ["x"]})
    assert answer.status_code == 503 and "no enabled serve answers /generate" in answer.json()["detail"].lower()


def test_generate_and_loglikelihood_reach_the_worker(anvil: str, key: str, worker_port: int) -> None:
    register_worker("hrm-a", worker_port, "hrm-demo", tier="fast", context_limit=512)
    register_worker("hrm-b", worker_port, "hrm-demo", tier="fast", context_limit=512)
    Serve.objects.create(name="vl", tier="fast", engine="vllm", base_url="http://127.0.0.1:9/v1", served_model="m")

    def listed() -> bool:
        return _post(anvil, key, "/generate", {"prompts": ["x"], "max_tokens": 1}).status_code == 200

    wait_for(listed, 10, "Anvil to see the hrm serves")
    first = _post(anvil, key, "/generate", {"prompts": ["def f", "class"], "max_tokens": 4, "temperature": 0})
    assert first.status_code == 200 and first.headers["x-anvil-served-by"] == "hrm-a"  # the first enabled
    assert len(first.json()["completions"]) == 2 and first.json()["usage"]["completion_tokens"] <= 8
    named = _post(anvil, key, "/loglikelihood", {"model": "hrm-b", "prompts": ["def"], "continuations": [" f"]})
    assert named.status_code == 200 and named.headers["x-anvil-served-by"] == "hrm-b"
    direct = httpx.post(f"http://127.0.0.1:{worker_port}/loglikelihood", timeout=30,
                        json={"prompts": ["def"], "continuations": [" f"]}).json()
    assert named.json() == direct

    # The worker's own errors pass through with its status and named field; Anvil's take the same shape.
    bad = _post(anvil, key, "/generate", {"prompts": [], "max_tokens": 4})
    assert bad.status_code == 400 and bad.json()["field"] == "prompts"
    unknown = _post(anvil, key, "/generate", {"model": "vl", "prompts": ["x"]})
    assert unknown.status_code == 404 and unknown.json()["field"] == "model"
    assert httpx.post(f"{anvil}/generate", json={"prompts": ["x"]}, timeout=10).status_code == 401
