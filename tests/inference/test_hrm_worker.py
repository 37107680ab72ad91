"""The HRM worker as a real process: the seed's endpoints and errors, OpenAI completions, readiness, drain."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from inference.hrm.checkpoint import load_checkpoint, save_checkpoint, train_tokenizer
from inference.hrm.config import HRMConfig
from inference.hrm.model import HRM
from tests.support.live import hrm_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hrm-tiny")
    tokenizer = train_tokenizer(["The quick brown fox jumps over the lazy dog. " * 30], 300)
    torch.manual_seed(3)
    save_checkpoint(directory, HRM(HRMConfig(vocab_size=300, d_model=64, n_heads=4, h_layers=1, l_layers=1,
                                             max_seq_len=256)), tokenizer)
    return directory


@pytest.fixture(scope="module")
def worker(checkpoint: Path, module_logs: Path) -> Iterator[tuple[str, object]]:
    with hrm_worker(module_logs, "hrm-tiny", checkpoint, ("--max-tokens", "64")) as (port, process):
        yield f"http://127.0.0.1:{port}", process


def test_generate_returns_completions_and_usage(worker) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    answer = httpx.post(f"{url}/generate", timeout=60, json={"prompts": ["Hello", "Once upon a time"],
                                                             "max_tokens": 8, "temperature": 0.7, "top_p": 0.9})
    assert answer.status_code == 200
    body = answer.json()
    assert len(body["completions"]) == 2 and all(isinstance(c, str) for c in body["completions"])
    assert body["usage"]["completion_tokens"] <= 16 and body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]


def test_a_seed_reproduces_a_sampled_completion(worker) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    request = {"prompts": ["The quick"], "max_tokens": 12, "temperature": 1.0, "seed": 42}
    first = httpx.post(f"{url}/generate", json=request, timeout=60).json()["completions"]
    assert httpx.post(f"{url}/generate", json=request, timeout=60).json()["completions"] == first


def test_loglikelihood_equals_an_independent_teacher_forced_sum(worker, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    pairs = [("The quick brown", " fox"), ("Hello", " world, again"), ("", "The")]
    ll = httpx.post(f"{url}/loglikelihood", timeout=60, json={"prompts": [p for p, _ in pairs],
                                                               "continuations": [c for _, c in pairs]}).json()["ll"]
    model, tokenizer = load_checkpoint(checkpoint)
    for (prompt, continuation), value in zip(pairs, ll, strict=True):
        context = tokenizer.encode(prompt).ids or [0]  # an empty prompt is conditioned on EOS (id 0)
        full = context + tokenizer.encode(continuation).ids
        expected = 0.0
        with torch.no_grad():
            for position in range(len(context), len(full)):  # one forward per continuation token
                logits, _ = model(torch.tensor([full[:position]]))
                expected += float(torch.log_softmax(logits[0, -1].double(), -1)[full[position]])
        assert math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-4)
        assert value < 0


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/generate", {"prompts": []}, 400, "prompts"),
    ("/generate", {"prompts": "hi"}, 422, "prompts"),
    ("/generate", {"prompts": ["hi"], "temperature": 3}, 400, "temperature"),
    ("/generate", {"prompts": ["hi"], "top_p": 0}, 400, "top_p"),
    ("/generate", {"prompts": ["hi"], "max_tokens": 0}, 400, "max_tokens"),
    ("/generate", {"prompts": ["hi"], "max_tokens": 100000}, 400, "max_tokens"),
    ("/generate", {"prompts": ["hi"], "seed": "x"}, 422, "seed"),
    ("/loglikelihood", {"prompts": ["a", "b"], "continuations": ["c"]}, 400, "continuations"),
    ("/loglikelihood", {"prompts": [], "continuations": []}, 400, "prompts"),
    ("/v1/completions", {"prompt": [True]}, 422, "prompt"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True, "stream": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "hi " * 300, "max_tokens": 8}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 422, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
])
def test_bad_requests_name_the_field(worker, path: str, body: dict, status: int, field: str) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    answer = httpx.post(f"{url}{path}", json=body, timeout=30)
    # The seed's routes name it in "field"; the OpenAI routes in OpenAI's error shape, as vLLM does.
    named = answer.json()["error"]["param"] if path.startswith("/v1/") else answer.json()["field"]
    assert answer.status_code == status and named == field, answer.text


def test_openai_completions_whole_and_streamed(worker) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    whole = httpx.post(f"{url}/v1/completions", timeout=60, json={"model": "hrm-tiny", "prompt": "The quick",
                                                                   "max_tokens": 6, "temperature": 0}).json()
    assert whole["choices"][0]["finish_reason"] in ("length", "stop") and whole["usage"]["completion_tokens"] <= 6
    text = ""
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60, json={
            "prompt": "The quick", "max_tokens": 6, "temperature": 0, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                import json

                text += json.loads(line[6:])["choices"][0]["text"]
    assert text == whole["choices"][0]["text"]  # greedy: the same either way
    assert httpx.get(f"{url}/v1/models", timeout=5).json()["data"][0]["id"] == "hrm-tiny"


def test_a_missing_max_tokens_fills_the_context_capped_by_the_worker_limit(worker) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    body = {"ignore_eos": True, "temperature": 0}
    short = httpx.post(f"{url}/v1/completions", json={"prompt": [5, 6], **body}, timeout=60).json()
    assert short["usage"]["completion_tokens"] == 64  # --max-tokens 64, though the context has room for 254
    long = httpx.post(f"{url}/v1/completions", json={"prompt": [5] * 220, **body}, timeout=60).json()
    assert long["usage"]["completion_tokens"] == 256 - 220  # what the context leaves
    chat = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], **body},
                      timeout=60).json()
    assert chat["usage"]["completion_tokens"] <= 64 and chat["choices"][0]["finish_reason"] in ("stop", "length")


def test_echo_with_logprobs_scores_the_prompt_as_teacher_forcing_does(worker, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    model, tokenizer = load_checkpoint(checkpoint)
    tokens = tokenizer.encode("The quick brown fox").ids
    body = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "prompt": [tokens], "echo": True, "logprobs": 2, "max_tokens": 1, "temperature": 0}).json()
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(tokens) + 1  # the echoed prompt, then one new token
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    expected = torch.log_softmax(logits[0].double(), -1)
    for position in range(1, len(tokens)):
        assert math.isclose(logprobs["token_logprobs"][position], float(expected[position - 1, tokens[position]]),
                            abs_tol=1e-4)
        assert len(logprobs["top_logprobs"][position]) <= 2
    greedy = int(expected[-1].argmax())
    assert math.isclose(logprobs["token_logprobs"][-1], float(expected[-1, greedy]), abs_tol=1e-4)
    assert body["choices"][0]["text"].startswith(tokenizer.decode(tokens))
    assert "".join(logprobs["tokens"]) == body["choices"][0]["text"]


def test_chat_and_completions_through_the_openai_sdk(worker) -> None:  # type: ignore[no-untyped-def]
    import openai

    url, _ = worker
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    whole = client.chat.completions.create(model="hrm-tiny", messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 10
    stream = client.chat.completions.create(model="hrm-tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same either way
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    completion = client.completions.create(model="hrm-tiny", prompt=["The quick", "Hello"], max_tokens=4,
                                           temperature=0)
    assert [c.index for c in completion.choices] == [0, 1]


def test_the_tokenizer_routes_round_trip(worker, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = worker
    info = httpx.get(f"{url}/tokenizer_info", timeout=5).json()
    assert info["eos_token"] == "<|endoftext|>" and "messages" in info["chat_template"]
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": "héllo wörld"}, timeout=5).json()["tokens"]
    assert httpx.post(f"{url}/detokenize", json={"tokens": tokens}, timeout=5).json()["prompt"] == "héllo wörld"


def test_sixteen_prompts_in_one_batch_keep_memory_stable(worker) -> None:  # type: ignore[no-untyped-def]
    import psutil

    url, process = worker
    worker_process = psutil.Process(process.pid)
    prompts = [f"Prompt number {i}: the quick brown fox" for i in range(16)]
    sizes = []
    for _ in range(5):
        body = httpx.post(f"{url}/generate", timeout=120, json={"prompts": prompts, "max_tokens": 32,
                                                                "temperature": 0.8, "seed": 1}).json()
        assert len(body["completions"]) == 16
        sizes.append(worker_process.memory_info().rss)
    # The first run may grow allocator pools; after it, the same work must not keep growing.
    assert max(sizes[1:]) - sizes[1] < 8 * 2**20, [s // 2**20 for s in sizes]


# Last: it stops the module's worker.
def test_metrics_and_graceful_shutdown(worker) -> None:  # type: ignore[no-untyped-def]
    url, process = worker
    assert "hrm_requests_total" in httpx.get(f"{url}/metrics", timeout=5).text
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=40) == 0
