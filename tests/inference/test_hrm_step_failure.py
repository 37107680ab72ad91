"""When the engine fails: a failed decode step fails the requests in it (500, or an error event in a
stream) and the worker goes on; a scheduler thread that dies anyway makes /readyz say so and the
process exit non-zero.

A checkpoint whose LM head is NaN (what a diverged training run leaves) is the real failure here:
greedy decoding still works (the warm-up passes), sampling cannot draw from NaN probabilities. The
same checkpoint brings a chat template that divides by zero: an error no route expects, which
the last-resort handler must answer as JSON and log.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from django.core.management.base import CommandError

from inference.hrm.checkpoint import eos_id, save_checkpoint, train_tokenizer
from inference.hrm.config import HRMConfig
from inference.hrm.engine import BatchEngine, SamplingParams, Sequence
from inference.hrm.model import HRM
from inference.hrm.server import Server
from inference.hrm.validation import Limits
from inference.hrm.worker import Worker
from inference.management.commands.runinference import Command as RunInference
from tests.support.live import hrm_worker
from tests.support.processes import ROOT, child_env, free_port, running

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


def _tiny(seed: int = 3) -> HRM:
    torch.manual_seed(seed)
    return HRM(HRMConfig(vocab_size=300, d_model=64, n_heads=4, h_layers=1, l_layers=1, max_seq_len=128))


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer([TEXT], 300)


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("hrm-nan")
    model = _tiny()
    with torch.no_grad():
        model.lm_head.weight.fill_(math.nan)
    save_checkpoint(directory, model, tokenizer)
    (directory / "chat_template.jinja").write_text("{{ messages | length // 0 }}")
    return directory


# --- the engine ----------------------------------------------------------------------------------


def test_a_failed_step_leaves_the_engine_clean_for_the_next_request(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _tiny().eval()
    prompt = tokenizer.encode("The quick brown").ids
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    reference = BatchEngine(model, tokenizer, eos_id=eos_id(tokenizer), max_batch=4)
    expected = reference.submit(Sequence(list(prompt), greedy))
    reference.run_until_idle()

    engine = BatchEngine(model, tokenizer, eos_id=eos_id(tokenizer), max_batch=4)
    running_one = engine.submit(Sequence(tokenizer.encode("Hello there").ids, greedy))
    for _ in range(3):
        engine.step()  # it holds a row and cache positions when the bad one arrives
    # The worker's validation refuses NaN; the engine takes whatever it is given, so a bad value reaches it here.
    poisoned = engine.submit(Sequence(list(prompt), SamplingParams(max_tokens=4, temperature=math.nan)))
    with pytest.raises(RuntimeError):
        engine.step()
    abandoned = engine.abandon()
    assert {id(s) for s in abandoned} == {id(running_one), id(poisoned)} and engine.idle

    after = engine.submit(Sequence(list(prompt), greedy))
    engine.run_until_idle()
    assert after.output == expected.output and after.finish_reason == "length"


# --- the worker process ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_worker(nan_checkpoint: Path, module_logs: Path) -> Iterator[str]:
    with hrm_worker(module_logs, "hrm-nan", nan_checkpoint, ("--max-tokens", "16")) as (port, _):
        yield f"http://127.0.0.1:{port}"


def worker_log(module_logs: Path, url: str) -> str:
    return (module_logs / f"hrm-{url.rsplit(':', 1)[1]}.log").read_text()


@pytest.mark.slow
def test_a_failing_step_is_a_500_naming_it_and_the_worker_goes_on(nan_worker: str, module_logs: Path) -> None:
    failed = httpx.post(f"{nan_worker}/generate", timeout=60,
                        json={"prompts": ["The quick", "Hello"], "max_tokens": 4, "temperature": 1.0})
    assert failed.status_code == 500, failed.text
    assert failed.json()["field"] is None and "generation failed" in failed.json()["detail"]
    assert "probability tensor" in failed.json()["detail"]
    # The loop went on: a request it can serve is served, and the worker still says it is ready.
    greedy = httpx.post(f"{nan_worker}/generate", timeout=60,
                        json={"prompts": ["The quick"], "max_tokens": 4, "temperature": 0})
    assert greedy.status_code == 200 and len(greedy.json()["completions"]) == 1
    assert httpx.get(f"{nan_worker}/readyz", timeout=5).status_code == 200
    log = worker_log(module_logs, nan_worker)
    assert "a decode step failed" in log and "Traceback" in log


@pytest.mark.slow
def test_a_failing_step_on_an_openai_route_is_an_openai_500(nan_worker: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{nan_worker}/v1", api_key="unused", timeout=60, max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        client.completions.create(model="hrm-nan", prompt="The quick", max_tokens=4, temperature=1.0)
    assert failed.value.status_code == 500
    error = failed.value.body
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "generation failed" in error["message"]
    whole = client.completions.create(model="hrm-nan", prompt="The quick", max_tokens=4, temperature=0)
    assert whole.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_a_stream_whose_step_fails_ends_with_an_error_event(nan_worker: str) -> None:
    with httpx.stream("POST", f"{nan_worker}/v1/completions", timeout=60, json={
            "prompt": "The quick", "max_tokens": 4, "temperature": 1.0, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "generation failed" in error["message"]


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_an_unexpected_error_is_a_json_500_in_the_routes_shape_and_logged(nan_worker: str, module_logs: Path,
                                                                         stream: bool) -> None:
    chat = httpx.post(f"{nan_worker}/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": stream})
    assert chat.status_code == 500 and chat.headers["content-type"].startswith("application/json"), chat.text
    assert chat.json()["error"]["type"] == "server_error" and "ZeroDivisionError" in chat.json()["error"]["message"]
    log = worker_log(module_logs, nan_worker)
    assert "POST /v1/chat/completions failed" in log and "ZeroDivisionError: integer division" in log


# --- a scheduler thread that dies anyway ------------------------------------------------------------


def test_readyz_is_503_once_the_scheduler_thread_died(tokenizer) -> None:  # type: ignore[no-untyped-def]
    # torch refuses zero threads: it fails the scheduler thread before its guarded loop, outside every guard
    # (settings never hand the worker 0: ANVIL_TORCH_THREADS=0 means torch's own default).
    engine = BatchEngine(_tiny().eval(), tokenizer, eos_id=eos_id(tokenizer))

    async def scenario() -> tuple[int, dict, int, dict]:
        worker = Worker(engine, "hrm-dead", Limits(max_tokens=8), threads=0)
        async with TestClient(TestServer(Server(worker).app())) as client:
            worker.start()
            await asyncio.wait_for(worker.died.wait(), 30)
            ready = await client.get("/readyz")
            generate = await asyncio.wait_for(client.post("/generate", json={"prompts": ["hi"], "max_tokens": 2}),
                                              30)
            return ready.status, await ready.json(), generate.status, await generate.json()

    ready_status, ready, generate_status, generate = asyncio.run(scenario())
    assert ready_status == 503 and ready["status"] == "failed" and "set_num_threads" in ready["detail"]
    assert generate_status == 503 and "scheduler stopped" in generate["detail"]  # answered, never left hanging


def test_a_dead_scheduler_thread_exits_the_worker_non_zero(tokenizer) -> None:  # type: ignore[no-untyped-def]
    engine = BatchEngine(_tiny().eval(), tokenizer, eos_id=eos_id(tokenizer))
    worker = Worker(engine, "hrm-dead", Limits(max_tokens=8), threads=0)
    with pytest.raises(CommandError, match="scheduler"):  # what makes runinference exit with status 1
        asyncio.run(RunInference()._serve(worker, "127.0.0.1", free_port()))


@pytest.mark.slow
def test_an_unreadable_thread_count_stops_the_worker_naming_the_variable(nan_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "manage.py"), "runinference", "--checkpoint", str(nan_checkpoint),
            "--port", str(free_port())]
    log = tmp_path / "worker.log"
    with running(argv, child_env(ANVIL_TORCH_THREADS="many"), log) as process:
        code = process.wait(timeout=90)
    assert code != 0
    assert "ANVIL_TORCH_THREADS='many' is not an integer" in log.read_text()
