"""Counting a prompt's tokens as the serve under test counts them, so a check's prompt fits its context.

vLLM and the HRM worker serve ``POST /tokenize`` at their server root, and Anvil's front door
relays the same route (with the API key): vLLM takes chat ``messages`` and applies the chat
template, as its chat route will; the HRM worker takes a ``prompt`` string. Both answer ``count``
(or ``tokens``) and ``max_model_len``. A serve with no such route is estimated conservatively
(``CONSERVATIVE_CHARS_PER_TOKEN``: real tokenizers give more characters per token on English
prose, so the estimate overcounts). Where only the content is counted, ``TEMPLATE_HEADROOM``
tokens are added for the chat template around it.

The context limit is the serve's (its row's, operator-set or probed), else what ``/tokenize`` or
``/models`` reports. A prompt is sized so that it and the answer's ``max_tokens`` fit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from evals.targets import Target
from serves.models import Serve

log = logging.getLogger(__name__)

CONSERVATIVE_CHARS_PER_TOKEN = 3.0
TEMPLATE_HEADROOM = 64
# One tokenize call counts at most a long haystack; a serve that takes longer is not one to size with.
TOKENIZE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PROBE_TEXT = "The grass is green. The sky is blue."


@dataclass
class TokenCounter:
    """Counts the tokens of a chat request's messages for one target; ``url`` None: an estimate."""

    model: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    context_limit: int | None = None
    chat_aware: bool = False  # the route applies the chat template to ``messages`` (vLLM)
    failures: int = 0

    @property
    def method(self) -> str:
        if self.url is None:
            return f"an estimate ({CONSERVATIVE_CHARS_PER_TOKEN:g} characters per token)"
        return "the serve's /tokenize" + ("" if self.chat_aware else " (content, plus room for the chat template)")

    def count(self, messages: list[dict[str, Any]]) -> int:
        """Tokens the chat route will see for ``messages`` (never fewer: an estimate overcounts)."""
        content = "\n".join(str(m.get("content") or "") for m in messages)
        if self.url is not None:
            body: dict[str, Any] = ({"model": self.model, "messages": messages, "add_generation_prompt": True}
                                    if self.chat_aware else {"model": self.model, "prompt": content})
            counted = _ask(self.url, body, self.headers)
            if counted is not None:
                return counted[0] + (0 if self.chat_aware else TEMPLATE_HEADROOM)
            # A tokenizer that stops answering mid-run: estimate from here on, and say so in each check.
            self.failures += 1
            log.warning("%s stopped answering; sizing by estimate from now on", self.url)
            self.url = None
        return int(len(content) / CONSERVATIVE_CHARS_PER_TOKEN) + 1 + TEMPLATE_HEADROOM

    def chars_per_token(self) -> float:
        """How many characters of haystack text make one token on this serve (for a first guess at a size)."""
        sample = [{"role": "user", "content": PROBE_TEXT * 40}]
        counted = self.count(sample) - (0 if self.chat_aware else TEMPLATE_HEADROOM)
        return max(0.5, len(sample[0]["content"]) / max(counted, 1))


def token_counter(target: Target, serve: Serve | None, headers: dict[str, str]) -> TokenCounter:
    """The counter for ``target``: its /tokenize when it answers one, else an estimate; and its context limit."""
    url = f"{_root(target.base_url)}/tokenize"
    counter = TokenCounter(target.model, headers=headers,
                           context_limit=serve.effective_context_limit if serve is not None else None)
    reported: int | None = None
    chat = _ask(url, {"model": target.model, "messages": [{"role": "user", "content": PROBE_TEXT}],
                      "add_generation_prompt": True}, headers)
    if chat is not None:
        counter.url, counter.chat_aware, reported = url, True, chat[1]
    else:
        plain = _ask(url, {"model": target.model, "prompt": PROBE_TEXT}, headers)
        if plain is not None:
            counter.url, reported = url, plain[1]
    if counter.context_limit is None:
        counter.context_limit = reported or _listed_limit(target, headers)
    return counter


def _root(base_url: str) -> str:
    """The server root of an OpenAI base URL (where vLLM, the HRM worker and Anvil serve /tokenize)."""
    return base_url.rstrip("/").removesuffix("/v1")


def _ask(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, int | None] | None:
    """(count, max_model_len) from a /tokenize answer, or None when the route does not count this body."""
    try:
        answer = httpx.post(url, json=body, headers=headers, timeout=TOKENIZE_TIMEOUT)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    try:
        payload = answer.json()
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    count = payload.get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        tokens = payload.get("tokens")
        if not isinstance(tokens, list):
            return None
        count = len(tokens)
    limit = payload.get("max_model_len")
    return count, limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def _listed_limit(target: Target, headers: dict[str, str]) -> int | None:
    """The model's ``max_model_len`` as ``GET /models`` lists it (vLLM, the HRM worker), or None."""
    try:
        answer = httpx.get(f"{target.base_url.rstrip('/')}/models", headers=headers, timeout=TOKENIZE_TIMEOUT)
        models = answer.json().get("data") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for entry in models if isinstance(models, list) else []:
        if isinstance(entry, dict) and entry.get("id") == target.model:
            limit = entry.get("max_model_len")
            return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    return None
