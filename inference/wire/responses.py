"""The OpenAI Responses API served through chat completions: ``POST /v1/responses``, stateless.

``request_to_chat`` turns a Responses body (OpenAI's shape, or llm-pool's: ``messages``,
``decoding``, ``thinking``) into a chat-completions body; ``response_from_chat`` turns a chat
answer into a Response object; ``StreamToResponses`` turns chat chunks into OpenAI's event
sequence as they arrive: ``response.created``, ``response.in_progress``, per output item
``response.output_item.added`` … ``response.output_item.done`` (with ``content_part`` and
``output_text`` events for a message, ``function_call_arguments`` for a tool call,
``reasoning_text`` for reasoning), then llm-pool's ``response.metrics`` and one of
``response.completed`` / ``response.incomplete`` / ``response.failed``, each numbered by
``sequence_number``. An Anthropic upstream reaches this module through ``openai_client``
(Anthropic → chat), so there is one Responses translator, not two.

Anvil keeps no prompt text at rest, so it cannot chain responses: ``store: true`` and
``previous_response_id`` are refused by the request checks before this module runs.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from inference.wire import DialectError
from inference.wire.reasoning import ReasoningAsk, from_effort, from_switch
from inference.wire.sse import encode

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
POOL_FIELDS = ("decoding", "messages", "thinking", "allow_remote")  # llm-pool's request shape


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def is_pool_shaped(body: dict[str, Any]) -> bool:
    """Whether the body uses llm-pool's fields, which only Anvil's translation understands."""
    return any(body.get(name) is not None for name in POOL_FIELDS)


def reasoning_ask(body: dict[str, Any]) -> ReasoningAsk | None:
    reasoning = body.get("reasoning")
    ask = from_effort(reasoning.get("effort")) if isinstance(reasoning, dict) else None
    return ask or from_switch(body.get("thinking"))


# --- request -------------------------------------------------------------------------------------


def request_to_chat(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    decoding = body.get("decoding") or {}
    out: dict[str, Any] = {"model": upstream_model, "messages": _messages(body)}
    max_tokens = body.get("max_output_tokens") or decoding.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name) if body.get(name) is not None else decoding.get(name)
        if value is not None:
            out[name] = value
    for name in ("top_k", "repetition_penalty"):
        if decoding.get(name) is not None:
            out[name] = decoding[name]
    if decoding.get("stop"):
        out["stop"] = list(decoding["stop"])
    if body.get("tools"):
        out["tools"] = [_tool(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    response_format = _response_format((body.get("text") or {}).get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    if body.get("user"):
        out["user"] = body["user"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # usage from the upstream, never estimated
    return out


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.get("instructions"):
        out.append({"role": "system", "content": body["instructions"]})
    if body.get("messages") is not None:  # llm-pool's multi-turn shape: chat messages with content items
        for index, message in enumerate(body["messages"]):
            content = message.get("content")
            out.append({"role": message["role"],
                        "content": content if isinstance(content, str)
                        else _parts(content, f"messages[{index}].content")})
        return out
    given = body.get("input")
    if isinstance(given, str):
        out.append({"role": "user", "content": given})
        return out
    loose: list[dict[str, Any]] = []  # llm-pool: content items straight in ``input``: one user turn
    for index, item in enumerate(given or []):
        where = f"input[{index}]"
        kind = item.get("type")
        if kind in ("input_text", "text", "input_image", "image_url"):
            loose.append(item)
        elif kind == "function_call":
            call = {"id": item.get("call_id") or new_id("call"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # parallel calls share one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id", ""), "content": text})
        elif kind == "reasoning":
            continue  # the model's own scratch space from an earlier turn, not conversation
        elif kind in (None, "message"):
            role = item.get("role")
            content = item.get("content")
            out.append({"role": "system" if role == "developer" else role,
                        "content": content if isinstance(content, str) else _parts(content, f"{where}.content")})
        else:
            raise DialectError(f"an input item of type {kind!r} cannot be served through chat completions",
                               f"{where}.type")
    if loose:
        out.append({"role": "user", "content": _parts(loose, "input")})
    return out


def _parts(content: Any, where: str) -> list[dict[str, Any]] | str:
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise DialectError("an input_image needs an image_url (file ids cannot be resolved here)",
                                   f"{where}[{index}].image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "image_url":
            parts.append({"type": "image_url", "image_url": part.get("image_url")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise DialectError(f"a {kind!r} content part cannot be served through chat completions",
                               f"{where}[{index}].type")
    if parts and all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)  # plain text reaches every chat template
    return parts


def _text_of(output: Any, where: str) -> str:
    parts = _parts(output, where)
    if isinstance(parts, str):
        return parts
    raise DialectError("a function_call_output may carry only text here", where)


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise DialectError(f"tool type {tool.get('type')!r} cannot be served through chat completions; only "
                           "function tools", f"tools[{index}]")
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
    for name in ("description", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise DialectError(f"tool_choice of type {choice.get('type')!r} cannot be served through chat completions",
                       "tool_choice")


def _response_format(text_format: Any) -> dict[str, Any] | None:
    if not isinstance(text_format, dict) or text_format.get("type") in (None, "text"):
        return None
    if text_format["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": text_format.get("name") or "output", "schema": text_format.get("schema") or {}}
    if text_format.get("strict") is not None:
        schema["strict"] = text_format["strict"]
    return {"type": "json_schema", "json_schema": schema}


# --- the Response object ----------------------------------------------------------------------------


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


class ResponseShell:
    """The fields every Response object of one request shares (echoing the request, as OpenAI does)."""

    def __init__(self, request: dict[str, Any], client_model: str, started: float) -> None:
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.request = request
        self.client_model = client_model
        self.started = started  # perf_counter at the request's start, for llm-pool's metrics
        self.first_token_at: float | None = None

    def envelope(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 incomplete: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        request = self.request
        text_format = (request.get("text") or {}).get("format") or {"type": "text"}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.client_model, "output": output, "usage": usage, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "tools": request.get("tools") or [], "tool_choice": request.get("tool_choice") or "auto",
            "parallel_tool_calls": request.get("parallel_tool_calls", True), "text": {"format": text_format},
            "reasoning": request.get("reasoning"), "metadata": request.get("metadata") or {},
            "store": False, "previous_response_id": None,
        }

    def metrics(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        """llm-pool's timing and token metrics, as Anvil sees them (no queue yet: 0)."""
        now = time.perf_counter()
        total = (now - self.started) * 1000
        ttft = (self.first_token_at - self.started) * 1000 if self.first_token_at else None
        output = (usage or {}).get("output_tokens")
        decoding = (now - self.first_token_at) if self.first_token_at else (now - self.started)
        return {"engine_queue_wait_ms": 0.0, "time_to_first_token_ms": round(ttft, 3) if ttft is not None else None,
                "pool_total_wall_ms": round(total, 3), "engine_prompt_tokens": (usage or {}).get("input_tokens"),
                "engine_output_tokens": output,
                "engine_tokens_per_second": round(output / decoding, 2) if output and decoding > 0 else None}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _ending(finish: str | None, calls: bool) -> tuple[str, str | None]:
    if not calls and finish in INCOMPLETE_REASONS:
        return "incomplete", INCOMPLETE_REASONS[finish]
    return "completed", None


def response_from_chat(answer: dict[str, Any], shell: ResponseShell) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        output.append(_reasoning_item(new_id("rs"), reasoning))
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"]))
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        output.append(_call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name", ""),
                                 function.get("arguments") or "{}"))
    status, incomplete = _ending(choice.get("finish_reason"), bool(calls))
    usage = _usage(answer.get("usage"))
    response = shell.envelope(status, output, usage, incomplete)
    response["metrics"] = shell.metrics(usage)
    return response


# --- the stream ---------------------------------------------------------------------------------------


class StreamToResponses:
    """Chat ``chat.completion.chunk`` payloads in, Responses SSE events (bytes) out."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.sequence = 0
        self.started = False
        self.finished = False
        self.output: list[dict[str, Any]] = []  # completed items, in output order
        self.open: dict[str, Any] | None = None  # the item being written: kind, id, index, text / call fields
        self.calls: dict[int, dict[str, Any]] = {}  # upstream tool index -> its item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode(payload, kind)

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        snapshot = self.shell.envelope("in_progress", [])
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._start()
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                out += self._text("reasoning", reasoning)
            if delta.get("content"):
                out += self._text("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _open(self, kind: str, **fields: Any) -> list[bytes]:
        out = self._close()
        index = len(self.output)
        if kind == "message":
            self.open = {"kind": kind, "id": new_id("msg"), "index": index, "text": ""}
            item = _message_item(self.open["id"], "", "in_progress")
            item["content"] = []
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            out.append(self._event("response.content_part.added", item_id=self.open["id"], output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []}))
        elif kind == "reasoning":
            self.open = {"kind": kind, "id": new_id("rs"), "index": index, "text": ""}
            item = {"type": "reasoning", "id": self.open["id"], "summary": [], "content": []}
            out.append(self._event("response.output_item.added", output_index=index, item=item))
        else:
            self.open = {"kind": kind, "id": new_id("fc"), "index": index, **fields}
            item = _call_item(self.open["id"], fields["call_id"], fields["name"], "", "in_progress")
            out.append(self._event("response.output_item.added", output_index=index, item=item))
        return out

    def _text(self, kind: str, text: str) -> list[bytes]:
        self.shell.first_token_at = self.shell.first_token_at or time.perf_counter()
        out = [] if self.open is not None and self.open["kind"] == kind else self._open(kind)
        assert self.open is not None
        self.open["text"] += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        out.append(self._event(name, item_id=self.open["id"], output_index=self.open["index"], content_index=0,
                               delta=text, **extra))
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        self.shell.first_token_at = self.shell.first_token_at or time.perf_counter()
        function = call.get("function") or {}
        upstream_index = int(call.get("index", 0))
        out: list[bytes] = []
        if upstream_index not in self.calls:
            out += self._open("function_call", call_id=call.get("id") or new_id("call"),
                              name=function.get("name") or "", arguments="")
            assert self.open is not None
            self.calls[upstream_index] = self.open
        item = self.calls[upstream_index]
        fragment = function.get("arguments")
        if fragment:
            if item is not self.open:
                raise DialectError("the upstream interleaved two tool calls' arguments, which Responses cannot "
                                   "stream")
            item["arguments"] += fragment
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=item["index"], delta=fragment))
        return out

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index, item_id = item["index"], item["id"]
        if item["kind"] == "message":
            part = {"type": "output_text", "text": item["text"], "annotations": [], "logprobs": []}
            done = _message_item(item_id, item["text"])
            events = [self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                                  text=item["text"], logprobs=[]),
                      self._event("response.content_part.done", item_id=item_id, output_index=index,
                                  content_index=0, part=part)]
        elif item["kind"] == "reasoning":
            done = _reasoning_item(item_id, item["text"])
            events = [self._event("response.reasoning_text.done", item_id=item_id, output_index=index,
                                  content_index=0, text=item["text"])]
        else:
            done = _call_item(item_id, item["call_id"], item["name"], item["arguments"] or "{}")
            events = [self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                  name=item["name"], arguments=item["arguments"] or "{}")]
        self.output.append(done)
        events.append(self._event("response.output_item.done", output_index=index, item=done))
        return events

    def finish(self) -> list[bytes]:
        """The closing events, once the upstream said [DONE] (or simply ended)."""
        if self.finished:
            return []
        self.finished = True
        out = self._start() + self._close()
        status, incomplete = _ending(self.finish_reason, bool(self.calls))
        response = self.shell.envelope(status, self.output, self.usage, incomplete)
        metrics = self.shell.metrics(self.usage)
        out.append(self._event("response.metrics", response_id=self.shell.id, metrics=metrics))
        response["metrics"] = metrics
        out.append(self._event(f"response.{status}", response=response))
        return out

    def error(self, error_type: str, message: str) -> list[bytes]:
        self.finished = True
        failed = self.shell.envelope("failed", self.output, self.usage,
                                     error={"code": error_type, "message": message})
        return self._start() + [self._event("response.failed", response=failed)]


class ChatChunksFrom:
    """Anthropic events in, Responses events out: ``openai_client.StreamToOpenAI`` then ``StreamToResponses``."""

    def __init__(self, to_chat: Any, to_responses: StreamToResponses) -> None:
        self.to_chat, self.to_responses = to_chat, to_responses

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        return self._on(self.to_chat.chunks(event))

    def finish(self) -> list[bytes]:
        return self._on(self.to_chat.finish_chunks()) + self.to_responses.finish()

    def error(self, error_type: str, message: str) -> list[bytes]:
        return self.to_responses.error(error_type, message)

    def _on(self, chunks: list[Any]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in chunks:
            out += self.to_responses.finish() if chunk == "[DONE]" else self.to_responses.feed(chunk)
        return out

