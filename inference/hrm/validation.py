"""Request bodies of the worker, checked field by field: a bad value is answered 400 (out of range)
or 422 (wrong type) with the field named, as the seed's contract asks.

Everything that reaches the scheduler thread is checked here first: a value the engine cannot
use (NaN, an unknown token id, a seed torch refuses) would otherwise fail a whole decode step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inference.hrm.engine import SamplingParams
from inference.hrm.errors import RequestError

__all__ = ["RequestError", "Limits"]

MAX_PROMPTS = 64
MAX_LOGPROBS = 20
MAX_STOPS = 32  # every stop string is searched for after every token: bound the work one request can ask for
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed takes (vLLM's bound too)
CONTEXT_CODE = "context_length_exceeded"


@dataclass
class Limits:
    max_tokens: int = 1024
    max_batch: int = 16
    max_queue: int = 256


def number(body: dict[str, Any], name: str, default: float, low: float, high: float, *, low_open: bool = False,
           integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestError(422, name, f"{name} must be {'an integer' if integer else 'a number'}")
    # Python's json reads NaN and Infinity; NaN passes every comparison below, so it is refused first.
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(400, name, f"{name} must be a finite number")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(400, name, f"{name} must be in {bracket}{_shown(low)}, {_shown(high)}]")
    return value


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def strings(body: dict[str, Any], name: str, *, required: bool = True) -> list[str]:
    value = body.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(422, name, f"{name} must be a list of strings")
    return value


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(422, name, f"{name} must be true or false")
    return value


def truncate_left(body: dict[str, Any]) -> bool:
    """``truncate: "left"`` asks that a prompt too long for the context lose its oldest tokens, not be refused."""
    value = body.get("truncate")
    if value in (None, "none"):
        return False
    if value != "left":
        raise RequestError(422, "truncate", 'truncate must be "left" or "none"')
    return True


def token_ids(tokens: list[int], vocab_size: int, field: str) -> list[int]:
    """Token ids the model can embed and the tokenizer can decode, else a 400 naming ``field``."""
    for token in tokens:
        if not 0 <= token < vocab_size:
            raise RequestError(400, field, f"token id {token} is out of range: the vocabulary has ids "
                                           f"0 to {vocab_size - 1}")
    return tokens


def seed_prompts(body: dict[str, Any]) -> list[str]:
    prompts = strings(body, "prompts")
    if not prompts:
        raise RequestError(400, "prompts", "prompts must not be empty")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(400, "prompts", f"at most {MAX_PROMPTS} prompts per request")
    return prompts


def openai_prompts(body: dict[str, Any], vocab_size: int) -> list[str | list[int]]:
    """OpenAI's ``prompt``: a string, a list of strings, a list of token ids, or a list of those lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            items: list[str | list[int]] = list(prompt)
        elif all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            items = [list(prompt)]
        elif all(isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
                 for item in prompt):
            items = list(prompt)
        else:
            raise RequestError(422, "prompt", "prompt must be a string, a list of strings, a list of token ids "
                                              "or a list of such lists")
        if len(items) > MAX_PROMPTS:
            raise RequestError(400, "prompt", f"at most {MAX_PROMPTS} prompts per request")
        for item in items:
            if isinstance(item, list):
                token_ids(item, vocab_size, "prompt")
        return items
    raise RequestError(422, "prompt", "prompt must be a non-empty string or list")


def sampling_from(body: dict[str, Any], *, default_temperature: float = 0.7,
                  logprobs: int | None = None) -> SamplingParams:
    """Everything but ``max_tokens``, which depends on each prompt's length (``fit_max_tokens``)."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else strings(body, "stop", required=False)
    if len(stops) > MAX_STOPS:
        raise RequestError(400, "stop", f"at most {MAX_STOPS} stop strings")
    seed = body.get("seed")
    if seed is not None:
        seed = number(body, "seed", 0, *SEED_RANGE, integer=True)
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise RequestError(400, name, f"{name} must be 1: this worker makes one completion per prompt")
    return SamplingParams(
        temperature=float(number(body, "temperature", default_temperature, 0, 2)),
        top_p=float(number(body, "top_p", 1.0, 0, 1, low_open=True)),
        seed=seed, stop=tuple(stops), logprobs=logprobs, ignore_eos=flag(body, "ignore_eos"))


def requested_max_tokens(body: dict[str, Any], limits: Limits, *, name: str = "max_tokens",
                         allow_zero: bool = False) -> int | None:
    """The client's ``max_tokens`` (checked against the worker's limit), or None when it sent none."""
    if body.get(name) is None:
        return None
    return int(number(body, name, 0, 0 if allow_zero else 1, limits.max_tokens, integer=True))


def fit_max_tokens(prompt_length: int, requested: int | None, *, context: int, limit: int, default: int | None,
                   prompt_field: str, tokens_field: str = "max_tokens") -> int:
    """The tokens one prompt may generate.

    None requested means ``default`` (capped by the worker's limit), or, with no default, as many as
    the context leaves after the prompt (vLLM's rule), either way never past the context. A
    requested number that does not fit is a 400 naming the prompt when the prompt alone fills the
    context, else naming the field that asked for too much.
    """
    room = context - prompt_length
    if requested is None:
        if room < 1:
            raise RequestError(400, prompt_field, f"This model's maximum context length is {context} tokens, and "
                                                  f"the {prompt_field} has {prompt_length}: no room for a completion.",
                               code=CONTEXT_CODE)
        return min(room, limit, default if default is not None else room)
    if requested > room:
        field = prompt_field if room < 1 else tokens_field
        raise RequestError(400, field, f"This model's maximum context length is {context} tokens. However, you "
                                       f"requested {prompt_length + requested} tokens ({prompt_length} in the "
                                       f"{prompt_field}, {requested} in the completion). Please reduce the length "
                                       f"of the {prompt_field} or completion.", code=CONTEXT_CODE)
    return requested
