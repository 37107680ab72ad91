"""Request bodies of the worker, checked field by field: a bad value is answered 400 (out of range)
or 422 (wrong type) with the field named, as the seed's contract asks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.hrm.engine import SamplingParams

MAX_PROMPTS = 64
MAX_LOGPROBS = 20


class RequestError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


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
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(400, name, f"{name} must be in {bracket}{low:g}, {high:g}]")
    return value


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


def seed_prompts(body: dict[str, Any]) -> list[str]:
    prompts = strings(body, "prompts")
    if not prompts:
        raise RequestError(400, "prompts", "prompts must not be empty")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(400, "prompts", f"at most {MAX_PROMPTS} prompts per request")
    return prompts


def openai_prompts(body: dict[str, Any]) -> list[str | list[int]]:
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
        return items
    raise RequestError(422, "prompt", "prompt must be a non-empty string or list")


def sampling_from(body: dict[str, Any], limits: Limits, *, default_max: int = 128, default_temperature: float = 0.7,
                  allow_zero_tokens: bool = False, logprobs: int | None = None) -> SamplingParams:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else strings(body, "stop", required=False)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(422, "seed", "seed must be an integer")
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise RequestError(400, name, f"{name} must be 1: this worker makes one completion per prompt")
    return SamplingParams(
        max_tokens=number(body, "max_tokens", min(default_max, limits.max_tokens), 0 if allow_zero_tokens else 1,
                          limits.max_tokens, integer=True),
        temperature=float(number(body, "temperature", default_temperature, 0, 2)),
        top_p=float(number(body, "top_p", 1.0, 0, 1, low_open=True)),
        seed=seed, stop=tuple(stops), logprobs=logprobs, ignore_eos=flag(body, "ignore_eos"))
