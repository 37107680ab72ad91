"""The continuous-batching engine: batched generation equals one-at-a-time, seeds, stops, limits."""

from __future__ import annotations

import pytest
import torch

from inference.hrm.checkpoint import eos_id, train_tokenizer
from inference.hrm.config import HRMConfig
from inference.hrm.engine import BatchEngine, QueueFull, SamplingParams, Sequence
from inference.hrm.model import HRM
from tests.support.hrm import greedy_cached

CONFIG = HRMConfig(vocab_size=300, d_model=64, n_heads=4, h_layers=1, l_layers=1, h_cycles=2, l_cycles=2,
                   max_seq_len=128)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer(["The quick brown fox jumps over the lazy dog. " * 30, "def f(x): return x\n" * 30], 300)


@pytest.fixture(scope="module")
def model() -> HRM:
    torch.manual_seed(7)
    return HRM(CONFIG).double().eval()


def engine(model: HRM, tokenizer, **kwargs) -> BatchEngine:  # type: ignore[no-untyped-def]
    return BatchEngine(model, tokenizer, eos_id=None, dtype=torch.float64, **kwargs)


PROMPTS = [[5, 9, 12], [40, 41, 42, 43, 44, 45, 46], [100], [7, 7, 7, 7, 7], [250, 3, 17, 90]]


def test_batched_greedy_generation_equals_one_at_a_time(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    alone = [greedy_cached(model, torch.tensor([prompt]), 12) for prompt in PROMPTS]
    for max_batch in (16, 2):  # all at once; and requests joining and leaving a batch of two
        running = engine(model, tokenizer, max_batch=max_batch)
        sequences = [running.submit(Sequence(p, SamplingParams(max_tokens=12))) for p in PROMPTS]
        running.run_until_idle()
        assert [s.output for s in sequences] == alone, f"max_batch={max_batch}"
        assert all(s.finish_reason == "length" for s in sequences)


def test_requests_of_different_lengths_join_a_running_batch(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    running = engine(model, tokenizer, max_batch=4)
    short = running.submit(Sequence(PROMPTS[0], SamplingParams(max_tokens=3)))
    long = running.submit(Sequence(PROMPTS[1], SamplingParams(max_tokens=10)))
    for _ in range(4):
        running.step()
    late = running.submit(Sequence(PROMPTS[2], SamplingParams(max_tokens=5)))  # joins mid-flight
    running.run_until_idle()
    assert short.output == greedy_cached(model, torch.tensor([PROMPTS[0]]), 3)
    assert long.output == greedy_cached(model, torch.tensor([PROMPTS[1]]), 10)
    assert late.output == greedy_cached(model, torch.tensor([PROMPTS[2]]), 5)


def test_a_seed_reproduces_a_sampled_completion(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    def sample(seed: int) -> list[int]:
        running = engine(model, tokenizer)
        sequence = running.submit(Sequence(PROMPTS[1], SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95,
                                                                       seed=seed)))
        running.submit(Sequence(PROMPTS[0], SamplingParams(max_tokens=20, temperature=1.0)))  # unseeded neighbour
        running.run_until_idle()
        return sequence.output

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_stop_strings_cut_exactly_and_streamed_text_adds_up(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    probe = engine(model, tokenizer)
    free = probe.submit(Sequence(PROMPTS[3], SamplingParams(max_tokens=30)))
    probe.run_until_idle()
    stop = free.text[5:8]  # a string the greedy output is certain to contain
    assert len(stop) == 3
    pieces: list[str] = []
    running = engine(model, tokenizer)
    cut = running.submit(Sequence(PROMPTS[3], SamplingParams(max_tokens=30, stop=(stop,)),
                                  on_token=lambda _s, text: pieces.append(text)))
    running.run_until_idle()
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[:free.text.find(stop)]
    assert "".join(pieces) == cut.text  # no piece of the stop string ever reached the client


def test_eos_ends_a_sequence(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    first = greedy_cached(model, torch.tensor([PROMPTS[0]]), 4)
    running = BatchEngine(model, tokenizer, eos_id=first[2], dtype=torch.float64)
    sequence = running.submit(Sequence(PROMPTS[0], SamplingParams(max_tokens=10)))
    running.run_until_idle()
    assert sequence.output == first[:2] and sequence.finish_reason == "stop"


def test_limits(model: HRM, tokenizer) -> None:  # type: ignore[no-untyped-def]
    running = engine(model, tokenizer, max_queue=2)
    running.submit(Sequence([1], SamplingParams(max_tokens=8)))
    running.submit(Sequence([2], SamplingParams(max_tokens=8)))
    with pytest.raises(QueueFull, match="max_queue=2"):
        running.submit(Sequence([3], SamplingParams(max_tokens=8)))
    with pytest.raises(ValueError, match="exceeds the context"):
        engine(model, tokenizer).submit(Sequence([1] * 100, SamplingParams(max_tokens=100)))
    assert eos_id(tokenizer) == 0
