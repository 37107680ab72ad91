"""An Anthropic client served by an OpenAI-compatible upstream.

``request_to_openai`` translates a ``/v1/messages`` body into a
``/v1/chat/completions`` body; ``response_to_anthropic`` translates a whole
answer back; ``StreamToAnthropic`` turns the upstream's chunks into the
Anthropic event sequence as they arrive.

An upstream's reasoning (``reasoning_content`` or ``reasoning``, as vLLM and SGLang write it) becomes
``thinking`` blocks, streamed as ``thinking_delta``.

Mistakes other gateways make, and this module does not: streamed tool input
arriving as ``{}`` (the argument fragments become ``input_json_delta`` events);
``end_turn`` where a tool was called (any tool call means ``tool_use``); an
empty text block before a tool call (a text block opens only for real text); a
tool name lost when one chunk carries text and a tool call (each part of a
chunk is handled); usage missing at the end (asked for with
``stream_options.include_usage`` and reported in ``message_delta``).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from inference.wire import DialectError, UpstreamProtocolError
from inference.wire.sse import encode

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


# --- request ----------------------------------------------------------------------


def request_to_openai(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": upstream_model, "messages": _messages(body)}
    if "max_tokens" in body:
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if name in body:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if isinstance(body.get("metadata"), dict) and body["metadata"].get("user_id"):
        out["user"] = str(body["metadata"]["user_id"])
    if body.get("tools"):
        out["tools"] = [_tool(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        choice, parallel = _tool_choice(body["tool_choice"])
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is False and body.get("tools"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # usage from the upstream, never estimated
    return out


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise DialectError(f"only text blocks are allowed in {where}", f"{where}[{index}]")
            parts.append(str(block.get("text", "")))
        return "\n".join(parts)
    raise DialectError(f"{where} must be a string or a list of text blocks", where)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.get("system"):
        out.append({"role": "system", "content": _text_of(body["system"], "system")})
    for index, message in enumerate(body["messages"]):
        where = f"messages[{index}]"
        content = message.get("content")
        if message["role"] == "assistant":
            out.append(_assistant_message(content, where))
        else:
            out.extend(_user_messages(content, where))
    return out


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content or []):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id") or new_tool_id(), "type": "function",
                          "function": {"name": block.get("name", ""),
                                       "arguments": json.dumps(block.get("input", {}), ensure_ascii=False)}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning is the model's own scratch space, not conversation
        else:
            raise DialectError(f"an assistant message cannot carry a {kind!r} block upstream",
                               f"{where}.content[{index}]")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content or []):
        kind = block.get("type")
        if kind == "tool_result":
            # Tool results answer the previous assistant turn's calls: they go first.
            result = block.get("content", "")
            text = result if isinstance(result, str) else _tool_result_text(result, f"{where}.content[{index}]")
            if block.get("is_error"):
                text = f"[tool error] {text}"
            tool_messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text})
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, f"{where}.content[{index}]")}})
        else:
            raise DialectError(f"a {kind!r} block has no OpenAI equivalent", f"{where}.content[{index}]")
    messages = list(tool_messages)
    if parts:
        if all(part["type"] == "text" for part in parts):
            messages.append({"role": "user", "content": "\n".join(part["text"] for part in parts)})
        else:
            messages.append({"role": "user", "content": parts})
    return messages


def _tool_result_text(blocks: Any, where: str) -> str:
    texts = []
    for block in blocks or []:
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        else:
            raise DialectError("tool results sent to an OpenAI upstream may hold only text", where)
    return "\n".join(texts)


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return str(source.get("url", ""))
    raise DialectError("an image source is base64 or url", where + ".source")


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom") or "name" not in tool:
        raise DialectError(f"server tool {tool.get('type')!r} has no OpenAI equivalent", f"tools[{index}]")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> tuple[Any, bool | None]:
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}, parallel
    raise DialectError(f"unknown tool_choice type {kind!r}", "tool_choice.type")


# --- whole response ----------------------------------------------------------------


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0)}


def _parse_arguments(arguments: str, name: str) -> dict[str, Any]:
    if not arguments or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"the upstream's arguments for tool {name!r} are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"the upstream's arguments for tool {name!r} are not a JSON object")
    return value


def response_to_anthropic(answer: dict[str, Any], client_model: str) -> dict[str, Any]:
    choices = answer.get("choices") or []
    if not choices:
        raise UpstreamProtocolError("the upstream answered with no choices")
    message = choices[0].get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name", "")
        content.append({"type": "tool_use", "id": call.get("id") or new_tool_id(), "name": name,
                        "input": _parse_arguments(function.get("arguments", ""), name)})
    finish = choices[0].get("finish_reason")
    stop_reason = "tool_use" if calls else STOP_REASONS.get(finish or "stop", "end_turn")
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(answer.get("usage")),
    }


# --- stream -------------------------------------------------------------------------


class StreamToAnthropic:
    """OpenAI ``chat.completion.chunk`` payloads in, Anthropic SSE events (bytes) out."""

    def __init__(self, client_model: str) -> None:
        self.client_model = client_model
        self.message_id = new_message_id()
        self.started = False
        self.finished = False
        self.block_index = -1
        self.open_block: str | None = None  # "thinking" | "text" | "tool"
        self.tool_blocks: dict[int, int] = {}  # upstream tool_calls index -> our block index
        self.current_tool: int | None = None
        self.saw_tool = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.client_model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [encode({"type": "message_start", "message": message}, "message_start")]

    def _close_block(self) -> list[bytes]:
        if self.open_block is None:
            return []
        self.open_block = None
        return [encode({"type": "content_block_stop", "index": self.block_index}, "content_block_stop")]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self.block_index += 1
        self.open_block = kind
        out.append(encode({"type": "content_block_start", "index": self.block_index, "content_block": block},
                          "content_block_start"))
        return out

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if self.open_block != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(encode({"type": "content_block_delta", "index": self.block_index,
                                   "delta": {"type": "thinking_delta", "thinking": reasoning}}, "content_block_delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open_block != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(encode({"type": "content_block_delta", "index": self.block_index,
                                   "delta": {"type": "text_delta", "text": text}}, "content_block_delta"))
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        upstream_index = int(call.get("index", 0))
        function = call.get("function") or {}
        if upstream_index not in self.tool_blocks:
            self.saw_tool = True
            block = {"type": "tool_use", "id": call.get("id") or new_tool_id(), "name": function.get("name") or "",
                     "input": {}}
            out += self._open("tool", block)
            self.tool_blocks[upstream_index] = self.block_index
            self.current_tool = upstream_index
        fragment = function.get("arguments")
        if fragment:
            out.append(encode({"type": "content_block_delta", "index": self.tool_blocks[upstream_index],
                               "delta": {"type": "input_json_delta", "partial_json": fragment}},
                              "content_block_delta"))
        return out

    def finish(self) -> list[bytes]:
        """The closing events, once the upstream said [DONE] (or simply ended)."""
        if self.finished:
            return []
        self.finished = True
        out = self._start() + self._close_block()
        stop_reason = "tool_use" if self.saw_tool else STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        usage = _usage(self.usage)
        out.append(encode({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]}},
                          "message_delta"))
        out.append(encode({"type": "message_stop"}, "message_stop"))
        return out

    def error(self, error_type: str, message: str) -> list[bytes]:
        self.finished = True
        return self._start() + [encode({"type": "error", "error": {"type": error_type, "message": message}}, "error")]
