"""Reference decoders for the HRM tests."""

from __future__ import annotations

import torch

from inference.hrm.model import HRM, HRMCache


def greedy_full_recompute(model: HRM, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """What the reference implementation did: the whole context again for every token."""
    tokens = prompt.clone()
    for _ in range(new_tokens):
        logits, _ = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, prompt.shape[1]:].tolist()


def greedy_cached(model: HRM, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    cache = HRMCache.empty(model.config, prompt.shape[0], "cpu", torch.float64)
    logits, _ = model(prompt, cache, 0)  # prefill
    out = []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(token))
        logits, _ = model(token, cache, cache.length)  # one position through the unrolled stack
    return out
