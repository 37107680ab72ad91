"""Choosing the next token: greedy at temperature 0, else temperature and nucleus (top_p) sampling,
reproducible with a per-request generator; and stop strings."""

from __future__ import annotations

import torch

# Below this a temperature is greedy: dividing logits by, say, 1e-300 makes them infinite and
# the softmax NaN, which would fail the whole batch's step (vLLM draws the same line).
SAMPLING_EPS = 1e-5


def next_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits (B, V), temperature (B,), top_p (B,) -> token ids (B,). Row b uses generators[b]."""
    greedy = logits.argmax(-1)
    out = greedy.clone()
    for row in range(logits.shape[0]):
        if float(temperature[row]) < SAMPLING_EPS:
            continue
        probs = torch.softmax(logits[row].float() / float(temperature[row]), dim=-1)
        if float(top_p[row]) < 1.0:
            ordered, order = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < float(top_p[row])  # the smallest set reaching top_p
            keep[0] = True  # the likeliest token always: a top_p that underflows to 0 in float32 must not empty it
            ordered = ordered * keep
            probs = torch.zeros_like(probs).scatter(0, order, ordered)
        out[row] = torch.multinomial(probs / probs.sum(), 1, generator=generators[row])[0]
    return out


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to (not including) the earliest stop string, and whether one was found."""
    cut = min((index for index in (text.find(stop) for stop in stops if stop) if index >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
