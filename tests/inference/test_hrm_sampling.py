"""Sampling at the edges of its ranges: values the worker accepts must never make NaN probabilities."""

from __future__ import annotations

import torch

from inference.hrm.sampling import next_tokens


def test_a_vanishing_temperature_samples_greedily() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    # 1e-40 (a float32 denormal) turns the logits into infinities and the softmax into NaN, unless taken as greedy.
    chosen = next_tokens(logits, torch.tensor([1e-40, 1e-6, 0.0]), torch.ones(3), [None, None, None])
    assert chosen.tolist() == logits.argmax(-1).tolist()


def test_a_vanishing_top_p_keeps_the_likeliest_token() -> None:
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    top_p = torch.tensor([1e-300, 1e-30])  # float32: the first is 0, which once kept no token at all
    generators = [torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)]
    chosen = next_tokens(logits, torch.ones(2), top_p, generators)
    assert chosen.tolist() == logits.argmax(-1).tolist()
