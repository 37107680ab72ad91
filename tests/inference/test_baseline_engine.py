"""The transformers baseline behind the worker's Engine interface: the same answers as plain
``generate``, scores equal to the model's own logits, and served by runinference like an HRM."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from inference.hrm.baseline import HFEngine, build_gpt2
from inference.hrm.checkpoint import train_tokenizer
from inference.hrm.engine import SamplingParams, Sequence
from tests.support.live import hrm_worker


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer = train_tokenizer(["The quick brown fox jumps over the lazy dog. " * 30], 300)
    build_gpt2(directory, tokenizer, d_model=64, layers=2, heads=4, max_seq_len=128)
    return directory


def test_batched_answers_equal_one_at_a_time_and_scores_equal_the_logits(gpt2: Path) -> None:
    engine = HFEngine(gpt2, max_batch=4)
    prompts = [engine.tokenizer.encode(text).ids for text in ("The quick", "A lazy dog jumps", "fox")]
    together = [engine.submit(Sequence(p, SamplingParams(max_tokens=8, ignore_eos=True))) for p in prompts]
    while not engine.idle:
        engine.step()
    for prompt, sequence in zip(prompts, together, strict=True):
        alone = engine.submit(Sequence(prompt, SamplingParams(max_tokens=8, ignore_eos=True)))
        engine.step()
        assert alone.output == sequence.output and len(alone.output) == 8 and alone.finish_reason == "length"
    tokens = prompts[1]
    scores = engine.score(tokens, top=3)
    with torch.no_grad():
        logits = engine.model(torch.tensor([tokens])).logits[0].double().log_softmax(-1)
    assert [s.token for s in scores] == tokens[1:]
    for position, score in enumerate(scores):
        assert math.isclose(score.logprob, float(logits[position, tokens[position + 1]]), abs_tol=1e-6)
        assert max(score.top.values()) == pytest.approx(float(logits[position].max()))


@pytest.mark.slow
def test_runinference_serves_a_transformers_directory(gpt2: Path, tmp_path: Path) -> None:
    with hrm_worker(tmp_path, gpt2.name, gpt2) as (port, _process):
        url = f"http://127.0.0.1:{port}"
        body = httpx.post(f"{url}/generate", json={"prompts": ["The quick", "fox"], "max_tokens": 5,
                                                   "temperature": 0}, timeout=60).json()
        assert len(body["completions"]) == 2 and body["usage"]["completion_tokens"] <= 10
        assert httpx.get(f"{url}/v1/models", timeout=5).json()["data"][0]["id"] == gpt2.name
