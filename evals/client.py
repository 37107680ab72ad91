"""Talking to an eval target: OpenAI chat completions over HTTP, with timeouts, read into an ``Answer``.

Evals speak the OpenAI dialect. A serve that speaks Anthropic is evaluated through Anvil's own
front door (``--base-url http://ANVIL/v1 --model SERVE``), which translates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from evals.errors import BadTarget, EvalError
from evals.targets import Target, unavailable
from serves.models import Dialect, Serve
from serves.upstream_keys import upstream_auth_headers

# A single eval request may generate for a while (a long context, a slow model); never forever.
REQUEST_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


class TargetRefused(EvalError):
    """The target answered a request with an error status of its own (``status``; None: not a chat completion)."""

    status_code = 502

    def __init__(self, message: str, *, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass
class Answer:
    text: str
    finish_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0

    @property
    def budget_exhausted(self) -> bool:
        """A blank answer cut off by max_tokens: the reasoning budget ran out before any answer came."""
        return not self.text.strip() and not self.tool_calls and self.finish_reason == "length"


def headers_for(target: Target) -> dict[str, str]:
    """The target's auth headers, read from the environment now (never stored, never logged)."""
    if target.serve_id is None:
        return {}
    serve = Serve.objects.filter(pk=target.serve_id).first()
    if serve is None:
        return {}
    if serve.dialect != Dialect.OPENAI:
        raise BadTarget(f"serve {serve.name} speaks {serve.dialect}; evals speak OpenAI",
                        hint=f"evaluate it through Anvil's front door: --base-url http://127.0.0.1:8000/v1 "
                             f"--model {serve.name}")
    return upstream_auth_headers(serve.dialect, serve.api_key_env)


class Client:
    """One target, one pooled HTTP client; use as a context manager."""

    def __init__(self, target: Target, timeout: httpx.Timeout = REQUEST_TIMEOUT) -> None:
        self.target = target
        self.http = httpx.Client(base_url=target.base_url, timeout=timeout, headers=headers_for(target))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> Answer:
        body = {"model": self.target.model, "messages": messages, **params}
        started = time.perf_counter()
        try:
            response = self.http.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise unavailable(self.target, f"{type(exc).__name__}: {exc}") from None
        latency = time.perf_counter() - started
        if response.status_code >= 400:
            raise TargetRefused(f"{self.target.label} answered {response.status_code}: {response.text[:300]}",
                                status=response.status_code)
        try:
            payload = response.json()
            choice = payload["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise TargetRefused(f"{self.target.label} answered something that is not a chat completion: "
                                f"{response.text[:300]}") from None
        usage = payload.get("usage") or {}
        return Answer(text=message.get("content") or "", finish_reason=choice.get("finish_reason") or "",
                      tool_calls=list(message.get("tool_calls") or []), prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens"), latency_s=latency)


def parsed_arguments(call: dict[str, Any]) -> dict[str, Any] | None:
    """A tool call's arguments as a JSON object, or None when they are not one."""
    try:
        value = json.loads((call.get("function") or {}).get("arguments") or "")
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
