"""An OpenAI client served by an Anthropic upstream.

``request_to_anthropic`` translates a ``/v1/chat/completions`` body into a
``/v1/messages`` body (system prompts lifted out, tool results merged into the
user turn so roles alternate, ``tool_choice`` and tools mapped);
``response_to_openai`` translates a whole answer back; ``StreamToOpenAI`` turns
Anthropic events into ``chat.completion.chunk`` payloads as they arrive.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from inference.wire import DialectError, UpstreamProtocolError
from inference.wire.sse import encode

Chunk = dict[str, Any] | str  # a chat.completion.chunk payload, or "[DONE]"

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


# --- request ----------------------------------------------------------------------


def request_to_anthropic(body: dict[str, Any], upstream_model: str, default_max_tokens: int) -> dict[str, Any]:
    if int(body.get("n") or 1) != 1:
        raise DialectError("an Anthropic upstream answers one choice per request; use n=1", "n")
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
    }
    if system:
        out["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("tools"):
        out["tools"] = [_tool(tool, index) for index, tool in enumerate(body["tools"])]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and body.get("tools"):
        choice = dict(choice or {"type": "auto"})
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
    return out


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise DialectError("only text parts are allowed here", f"{where}[{index}]")
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise DialectError("content must be a string or a list of parts", where)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise DialectError("content must be a string or a list of parts", where)
    blocks = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            blocks.append({"type": "image", "source": _image_source(url, f"{where}[{index}].image_url.url")})
        else:
            raise DialectError(f"a {kind!r} part has no Anthropic equivalent", f"{where}[{index}]")
    return blocks


def _image_source(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        if ";base64" not in header:
            raise DialectError("a data: image URL must be base64", where)
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise DialectError("an image URL is http(s) or a base64 data: URL", where)


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"), f"{where}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = json.loads(arguments)
        except json.JSONDecodeError:
            raise DialectError("tool call arguments must be a JSON object",
                               f"{where}.tool_calls[{index}].function.arguments") from None
        if not isinstance(tool_input, dict):
            raise DialectError("tool call arguments must be a JSON object",
                               f"{where}.tool_calls[{index}].function.arguments")
        blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                       "input": tool_input})
    return blocks


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content"), f"{where}.content"))
            continue
        if role == "assistant":
            role_out, blocks = "assistant", _assistant_blocks(message, where)
        elif role == "tool":
            role_out = "user"
            blocks = [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                       "content": _text(message.get("content"), f"{where}.content")}]
        elif role == "user":
            role_out, blocks = "user", _user_blocks(message.get("content"), f"{where}.content")
        else:
            raise DialectError(f"unknown role {role!r}", f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role_out:
            # Anthropic turns alternate: consecutive tool results (and the user text
            # after them) join one user turn, in order, tool results first.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role_out, "content": blocks})
    return "\n\n".join(part for part in system if part), turns


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    function = tool.get("function") if tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise DialectError("only function tools can be sent to an Anthropic upstream", f"tools[{index}]")
    out = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    raise DialectError("tool_choice is auto, required, none or a function", "tool_choice")


# --- whole response ----------------------------------------------------------------


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    prompt = int(usage.get("input_tokens") or 0) + int(usage.get("cache_read_input_tokens") or 0) + int(
        usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response_to_openai(answer: dict[str, Any], client_model: str) -> dict[str, Any]:
    if answer.get("type") != "message":
        raise UpstreamProtocolError("the upstream's answer is not a message")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for block in answer.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""),
                                       "arguments": json.dumps(block.get("input", {}), ensure_ascii=False)}})
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    finish = "tool_calls" if calls else FINISH_REASONS.get(answer.get("stop_reason") or "end_turn", "stop")
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": client_model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(answer.get("usage")),
    }


# --- stream -------------------------------------------------------------------------


class StreamToOpenAI:
    """Anthropic event payloads in, OpenAI SSE chunks (bytes) out.

    ``chunks`` gives the chunk payloads themselves (``"[DONE]"`` last), for a translator that goes
    on to another dialect (an Anthropic upstream answering a Responses client).
    """

    def __init__(self, client_model: str, include_usage: bool) -> None:
        self.client_model = client_model
        self.include_usage = include_usage
        self.id = new_completion_id()
        self.created = int(time.time())
        self.sent_role = False
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.client_model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        return [encode(chunk) for chunk in self.chunks(event)]

    def finish(self) -> list[bytes]:
        return [encode(chunk) for chunk in self.finish_chunks()]

    def _role(self) -> list[Chunk]:
        if self.sent_role:
            return []
        self.sent_role = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def chunks(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            self.usage.update((event.get("message") or {}).get("usage") or {})
            return self._role()
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[int(event.get("index", 0))] = index
                initial = block.get("input") or {}
                call = {"index": index, "id": block.get("id", ""), "type": "function",
                        "function": {"name": block.get("name", ""),
                                     "arguments": json.dumps(initial) if initial else ""}}
                return self._role() + [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return self._role() + [self._chunk({"content": block["text"]})]
            return self._role()
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._role() + [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(int(event.get("index", 0)))
                if index is None:
                    raise UpstreamProtocolError("input_json_delta for a block that is not a tool_use")
                fragment = delta.get("partial_json", "")
                if not fragment:
                    return []
                return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})]
            if delta.get("type") == "thinking_delta":
                return self._role() + [self._chunk({"reasoning_content": delta.get("thinking", "")})]
            return []
        if kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            return []
        if kind == "message_stop":
            return self.finish_chunks()
        return []  # ping, content_block_stop

    def finish_chunks(self) -> list[Chunk]:
        if self.finished:
            return []
        self.finished = True
        finish = "tool_calls" if self.tool_index else FINISH_REASONS.get(self.stop_reason or "end_turn", "stop")
        out = self._role() + [self._chunk({}, finish)]
        if self.include_usage:
            out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.client_model, "choices": [], "usage": _usage(self.usage)})
        out.append("[DONE]")
        return out

    def error(self, error_type: str, message: str) -> list[bytes]:
        self.finished = True
        return [encode({"error": {"message": message, "type": error_type, "param": None, "code": None}})]
