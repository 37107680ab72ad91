"""Reading an OpenAI chat stream with the time each piece of content arrived."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai


@dataclass
class TimedStream:
    contents: list[str] = field(default_factory=list)  # the content of each chunk that had some
    arrived: list[float] = field(default_factory=list)  # when each arrived, seconds after the request
    tokens: list[tuple[str, float]] = field(default_factory=list)  # (token, logprob), when asked for logprobs
    finish_reason: str | None = None
    completion_tokens: int | None = None  # from the usage chunk, when asked for it
    at_first_content: Any = None  # what ``on_first_content`` returned, called as the first content arrived

    @property
    def text(self) -> str:
        return "".join(self.contents)

    @property
    def spread(self) -> float:
        """From the first piece of content to the last."""
        return self.arrived[-1] - self.arrived[0]


def timed_chat_stream(client: openai.OpenAI, model: str, on_first_content: Callable[[], Any] | None = None,
                      **params: Any) -> TimedStream:
    result = TimedStream()
    started = time.monotonic()
    for chunk in client.chat.completions.create(model=model, stream=True, **params):
        if chunk.usage:
            result.completion_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                result.contents.append(choice.delta.content)
                result.arrived.append(time.monotonic() - started)
                if on_first_content and len(result.contents) == 1:
                    result.at_first_content = on_first_content()
            if choice.logprobs and choice.logprobs.content:
                result.tokens += [(entry.token, entry.logprob) for entry in choice.logprobs.content]
            result.finish_reason = choice.finish_reason or result.finish_reason
    return result
