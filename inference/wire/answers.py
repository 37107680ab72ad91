"""An upstream's answer, whole or streamed, reduced to a verify.Answer (text, tool calls, finish).

Three wires: ``openai`` (chat and completions), ``anthropic`` (messages) and ``responses`` (a serve
that speaks the Responses API natively). Payloads reach these functions only after
``inference.wire.upstream`` has checked their shape.
"""

from __future__ import annotations

import json
from typing import Any

from routing.verify import Answer

ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def from_openai(answer: dict[str, Any]) -> Answer:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [((c.get("function") or {}).get("name", ""), (c.get("function") or {}).get("arguments", ""))
             for c in message.get("tool_calls") or []]
    text = message.get("content") if "message" in choice else choice.get("text")
    return Answer(text or "", calls, choice.get("finish_reason") or "")


def from_anthropic(answer: dict[str, Any]) -> Answer:
    text, calls = [], []
    for block in answer.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append((block.get("name", ""), json.dumps(block.get("input", {}))))
    return Answer("".join(text), calls, ANTHROPIC_FINISH.get(answer.get("stop_reason") or "", "other"))


RESPONSES_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def from_responses(answer: dict[str, Any]) -> Answer:
    text, calls = [], []
    for item in answer.get("output") or []:
        if item.get("type") == "message":
            text += [part.get("text", "") for part in item.get("content") or [] if part.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            calls.append((item.get("name", ""), item.get("arguments", "")))
    return Answer("".join(text), calls, _responses_finish(answer, bool(calls)))


def _responses_finish(response: dict[str, Any], calls: bool) -> str:
    if response.get("status") == "incomplete":
        return RESPONSES_FINISH.get((response.get("incomplete_details") or {}).get("reason", ""), "length")
    return "tool_calls" if calls else "stop"


REDUCERS = {"openai": from_openai, "anthropic": from_anthropic, "responses": from_responses}


class StreamAccumulator:
    """Feed upstream event payloads (either dialect); ``answer`` is what they added up to."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.text: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [name, arguments]
        self.finish = ""
        self.size = 0  # characters of content so far (text, reasoning, tool names and arguments)

    def feed(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        if self.dialect == "anthropic":
            self._anthropic(payload)
        elif self.dialect == "responses":
            self._responses(payload)
        else:
            self._openai(payload)

    def _openai(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for text in (delta.get("content"), choice.get("text")):
                if isinstance(text, str):
                    self.text.append(text)
                    self.size += len(text)
            self.size += len(delta.get("reasoning_content") or delta.get("reasoning") or "")
            for call in delta.get("tool_calls") or []:
                entry = self.calls.setdefault(int(call.get("index", 0)), ["", ""])
                function = call.get("function") or {}
                entry[0] = function.get("name") or entry[0]
                entry[1] += function.get("arguments") or ""
                self.size += len(function.get("name") or "") + len(function.get("arguments") or "")
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.calls[int(event.get("index", 0))] = [block.get("name", ""), ""]
                self.size += len(block.get("name", ""))
            elif block.get("type") == "text":
                self.text.append(block.get("text", ""))
                self.size += len(block.get("text", ""))
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.append(delta.get("text", ""))
                self.size += len(delta.get("text", ""))
            elif delta.get("type") == "thinking_delta":
                self.size += len(delta.get("thinking", ""))
            elif delta.get("type") == "input_json_delta" and int(event.get("index", 0)) in self.calls:
                self.calls[int(event.get("index", 0))][1] += delta.get("partial_json", "")
                self.size += len(delta.get("partial_json", ""))
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish = ANTHROPIC_FINISH.get(reason, "other")

    def _responses(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_text.delta":
            self.text.append(event.get("delta", ""))
            self.size += len(event.get("delta", ""))
        elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            self.size += len(event.get("delta", ""))
        elif kind == "response.output_item.added" and (event.get("item") or {}).get("type") == "function_call":
            name = event["item"].get("name", "")
            self.calls[int(event.get("output_index", 0))] = [name, ""]
            self.size += len(name)
        elif kind == "response.function_call_arguments.delta" and int(event.get("output_index", 0)) in self.calls:
            self.calls[int(event.get("output_index", 0))][1] += event.get("delta", "")
            self.size += len(event.get("delta", ""))
        elif kind in ("response.completed", "response.incomplete"):
            self.finish = _responses_finish(event.get("response") or {}, bool(self.calls))

    def answer(self) -> Answer:
        calls = [(name, arguments or "{}") for _, (name, arguments) in sorted(self.calls.items())]
        return Answer("".join(self.text), calls, self.finish)


def usage_of(payload: Any, dialect: str) -> tuple[int | None, int | None] | None:
    """(prompt tokens, completion tokens) an upstream payload reports, whole or one stream event."""
    if not isinstance(payload, dict):
        return None
    if dialect == "anthropic":
        usage = payload.get("usage")
        if payload.get("type") == "message_start":
            usage = (payload.get("message") or {}).get("usage")
        if not isinstance(usage, dict):
            return None
        prompt = None
        if usage.get("input_tokens") is not None:
            prompt = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens",
                                                          "cache_creation_input_tokens"))
        completion = usage.get("output_tokens")
        return prompt, int(completion) if completion is not None else None
    if dialect == "responses":
        whole = payload.get("response") if str(payload.get("type", "")).startswith("response.") else payload
        usage = (whole or {}).get("usage") if isinstance(whole, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        return (int(prompt) if prompt is not None else None, int(completion) if completion is not None else None)
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (int(prompt) if prompt is not None else None, int(completion) if completion is not None else None)
