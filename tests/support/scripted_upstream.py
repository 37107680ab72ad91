"""A scripted model server speaking both OpenAI and Anthropic, run as a real process on loopback.

    python tests/support/scripted_upstream.py --port 9001 [--deltas 64 --delay-ms 20]

The scenario is picked by a marker in the last user message, ``[[NAME]]``:
text (default), tool, text+tool, error500, error400 (a context-length refusal), invalid400, midstream, slow, badjson,
truncated, reasoning (reasoning_content before the answer), the faults of a broken engine (shortbody,
badchoices, baddelta, arraydata, badusage, hang, empty400), the fault matrix's faults (each streamed or whole, its
text ``part0 part1 …`` so a partial answer is told from a fallback's ``tok0 …``: hangfirst (nothing at all, not even
the headers), hangmid (three pieces, then silence), die5 (five pieces, then the connection is cut), badsse (an HTML
error page spliced into the event stream, which then ends with no [DONE]), notjson (a frame, or a whole body, that
is not JSON)), and
diligent (a non-streamed answer that does what the request asks: calls the offered tool with the
city the question names, fills a JSON schema, finds a passphrase, writes the asked-for function,
answers the benchmark's questions; streamed, it is ``text``), exhausted (a blank answer cut off by
max_tokens: a reasoning model that spent its budget thinking), judge (a judge serve: a rubric grade of
JUDGE_POINTS on every dimension, as the JSON object the request's json_schema, or else its "exactly the
keys: …" line, asks for; non-streamed), judgebad (a judge whose answer is prose, not the rubric's JSON);
``--force-scenario NAME`` makes every request that scenario (a serve that always misbehaves).
Usage numbers are fixed and distinctive (prompt 11 / input 13) so tests can
tell relayed usage from estimated usage. Every request is recorded:
GET /_requests lists them, DELETE /_requests forgets them; a streaming
request whose client went away is recorded in GET /_disconnects with the time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 11
INPUT_TOKENS = 13
MARKER = re.compile(r"\[\[([a-z0-9+]+)\]\]")
TOOL_ARGS = ['{"ci', 'ty": "Pa', 'ris", "unit', 's": "c"}']
REASONING = "The user greets me. I should greet back."
JUDGE_POINTS = 4
JUDGE_KEYS = re.compile(r"exactly the keys: ([a-z_, ]+)\.")

requests_seen: list[dict[str, Any]] = []
disconnects: list[dict[str, Any]] = []


FORCED: list[str] = []


def scenario_of(body: dict[str, Any]) -> str:
    if FORCED:
        return FORCED[0]
    texts: list[str] = []
    for message in body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [part.get("text", "") for part in content if isinstance(part, dict)]
    if isinstance(body.get("prompt"), str):
        texts.append(body["prompt"])
    found = MARKER.findall(texts[-1] if texts else "")
    return found[-1] if found else "text"


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def diligent_answer(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What a model that follows instructions would answer (the preflight and benchmark cases)."""
    text = _last_user_text(body)
    if body.get("tools"):
        city = re.search(r" in ([A-Z][a-z]+)", text)
        arguments = json.dumps({"city": city.group(1) if city else "nowhere"})
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": tool_name(body), "arguments": arguments}}]}, \
            "tool_calls"
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    if schema:
        samples = {"string": "x", "boolean": True, "integer": 1, "number": 1.5}
        value = {key: samples.get(spec.get("type"), None) for key, spec in schema.get("properties", {}).items()}
        return {"role": "assistant", "content": json.dumps(value)}, "stop"
    if (found := re.search(r"The secret passphrase is ([\w-]+)\.", text)) is not None:
        return {"role": "assistant", "content": found.group(1)}, "stop"
    if (found := re.search(r"function `(\w+)\(([^)]*)\)`", text)) is not None:
        code = f"def {found.group(1)}({found.group(2)}):\n    return max(low, min(value, high))\n"
        return {"role": "assistant", "content": f"```python\n{code}```"}, "stop"
    if (found := re.search(r"What is (\d+) \+ (\d+)", text)) is not None:
        return {"role": "assistant", "content": str(int(found.group(1)) + int(found.group(2)))}, "stop"
    if (found := re.search(r"'(\w+)' backwards", text)) is not None:
        return {"role": "assistant", "content": found.group(1)[::-1]}, "stop"
    if "capital of France" in text:
        return {"role": "assistant", "content": "Paris"}, "stop"
    return {"role": "assistant", "content": "I do not know."}, "stop"


def judge_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A judge's rubric grade: JUDGE_POINTS for every dimension the request names."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    keys = list(schema.get("properties") or {})
    if not keys:
        asked = " ".join(str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
        found = JUDGE_KEYS.search(asked)
        keys = [key.strip() for key in found.group(1).split(",")] if found else []
    return {"role": "assistant", "content": json.dumps(dict.fromkeys(keys, JUDGE_POINTS))}


def tool_name(body: dict[str, Any]) -> str:
    for tool in body.get("tools") or []:
        name = (tool.get("function") or {}).get("name") or tool.get("name")
        if name:
            return name
    return "get_weather"


class Script:
    def __init__(self, deltas: int, delay: float) -> None:
        self.deltas = deltas
        self.delay = delay

    # --- OpenAI ---------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        scenario = scenario_of(body)
        if scenario in ("error500", "error400", "invalid400"):
            return self._openai_error(scenario)
        if scenario in FAULTS:
            return await FAULTS[scenario](self, request, body)
        model = body.get("model", "")
        if not body.get("stream"):
            return web.json_response(self._chat_whole(scenario, body, model))
        response = await self._sse_start(request)
        try:
            await self._chat_stream(response, scenario, body, model)
        except asyncio.CancelledError:
            disconnects.append({"path": request.path, "at": time.time()})
            raise
        return response

    def _chat_whole(self, scenario: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(f"tok{i} " for i in range(self.deltas))}
        finish = "length" if scenario == "truncated" else "stop"
        if scenario == "diligent":
            message, finish = diligent_answer(body)
        elif scenario == "exhausted":
            message, finish = {"role": "assistant", "content": ""}, "length"
        elif scenario == "judge":
            message = judge_answer(body)
        elif scenario == "judgebad":
            message = {"role": "assistant", "content": "A solid answer: I would give it 4 out of 5 on most counts."}
        elif scenario == "reasoning":
            message["reasoning_content"] = REASONING
        if scenario in ("tool", "text+tool", "badjson"):
            arguments = "".join(TOOL_ARGS) if scenario != "badjson" else '{"city": Paris'
            message = {"role": "assistant", "content": "Let me check." if scenario == "text+tool" else None,
                       "tool_calls": [{"id": "call_1", "type": "function",
                                       "function": {"name": tool_name(body), "arguments": arguments}}]}
            finish = "tool_calls"
        return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": self.deltas,
                          "total_tokens": PROMPT_TOKENS + self.deltas}}

    async def _chat_stream(self, response: web.StreamResponse, scenario: str, body: dict[str, Any],
                           model: str) -> None:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        await self._send(response, chunk({"role": "assistant", "content": ""}))
        finish = "length" if scenario == "truncated" else "stop"
        if scenario == "reasoning":  # a reasoning model thinks first (vLLM's reasoning_content deltas)
            for piece in REASONING.split(" "):
                await self._send(response, chunk({"reasoning_content": piece + " "}))
        if scenario == "exhausted":  # a reasoning model that spent its budget: no content at all
            await self._send(response, chunk({}, "length"))
            await response.write(b"data: [DONE]\n\n")
            return
        if scenario == "badjson":
            await self._send(response, chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                               "function": {"name": tool_name(body),
                                                                            "arguments": '{"city": Paris'}}]}))
            finish = "tool_calls"
        elif scenario in ("tool", "text+tool"):
            first = {"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": tool_name(body), "arguments": TOOL_ARGS[0]}}
            delta: dict[str, Any] = {"tool_calls": [first]}
            if scenario == "text+tool":
                delta["content"] = "Let me check."
            await self._send(response, chunk(delta))
            for fragment in TOOL_ARGS[1:]:
                await asyncio.sleep(self.delay)
                await self._send(response, chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
            finish = "tool_calls"
        else:
            for i in range(self.deltas):
                if i:
                    await asyncio.sleep(30 if scenario == "slow" else self.delay)
                await self._send(response, chunk({"content": f"tok{i} "}))
                if scenario == "midstream" and i == 2:
                    assert request_transport(response) is not None
                    request_transport(response).close()  # the connection breaks mid-answer
                    return
        await self._send(response, chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            completion = len(TOOL_ARGS) if finish == "tool_calls" else self.deltas
            await self._send(response, {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                                        "model": model, "choices": [],
                                        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                                                  "total_tokens": PROMPT_TOKENS + completion}})
        await response.write(b"data: [DONE]\n\n")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body.get("model", "")
        if not body.get("stream"):
            return web.json_response({
                "id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
                "choices": [{"index": 0, "text": "".join(f"tok{i} " for i in range(self.deltas)),
                             "finish_reason": "length", "logprobs": None}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": self.deltas,
                          "total_tokens": PROMPT_TOKENS + self.deltas}})
        response = await self._sse_start(request)
        for i in range(self.deltas):
            if i:
                await asyncio.sleep(self.delay)
            await self._send(response, {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
                                        "choices": [{"index": 0, "text": f"tok{i} ", "finish_reason": None}]})
        await response.write(b"data: [DONE]\n\n")
        return response

    @staticmethod
    def _openai_error(scenario: str) -> web.Response:
        status = 500 if scenario == "error500" else 400
        message = {"error500": "the engine crashed", "error400": "This model's maximum context length is 8 tokens",
                   "invalid400": "the scripted server refuses this request"}[scenario]
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": None}}, status=status)

    # --- Anthropic ------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        scenario = scenario_of(body)
        if scenario in ("error500", "error400"):
            status = 500 if scenario == "error500" else 400
            kind = "api_error" if status == 500 else "invalid_request_error"
            return web.json_response({"type": "error", "error": {"type": kind, "message": f"scripted {status}"}},
                                     status=status)
        model = body.get("model", "")
        tool = scenario in ("tool", "text+tool")
        if not body.get("stream"):
            content: list[dict[str, Any]] = []
            if scenario == "text+tool":
                content.append({"type": "text", "text": "Let me check."})
            if tool:
                content.append({"type": "tool_use", "id": "toolu_1", "name": tool_name(body),
                                "input": json.loads("".join(TOOL_ARGS))})
            else:
                content.append({"type": "text", "text": "".join(f"tok{i} " for i in range(self.deltas))})
            return web.json_response({"id": "msg_up", "type": "message", "role": "assistant", "model": model,
                                      "content": content, "stop_reason": "tool_use" if tool else "end_turn",
                                      "stop_sequence": None,
                                      "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": self.deltas}})
        response = await self._sse_start(request)
        try:
            await self._messages_stream(response, scenario, body, model)
        except asyncio.CancelledError:
            disconnects.append({"path": request.path, "at": time.time()})
            raise
        return response

    async def _messages_stream(self, response: web.StreamResponse, scenario: str, body: dict[str, Any],
                               model: str) -> None:
        async def event(name: str, payload: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

        await event("message_start", {"type": "message_start", "message": {
            "id": "msg_up", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}})
        index = 0
        if scenario in ("tool", "text+tool"):
            if scenario == "text+tool":
                await event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
                await event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": "Let me check."}})
                await event("content_block_stop", {"type": "content_block_stop", "index": 0})
                index = 1
            await event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": tool_name(body), "input": {}}})
            for fragment in TOOL_ARGS:
                await asyncio.sleep(self.delay)
                await event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": fragment}})
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
            stop, output = "tool_use", len(TOOL_ARGS)
        else:
            await event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})
            for i in range(self.deltas):
                if i:
                    await asyncio.sleep(30 if scenario == "slow" else self.delay)
                await event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": f"tok{i} "}})
                if scenario == "midstream" and i == 2:
                    request_transport(response).close()
                    return
            await event("content_block_stop", {"type": "content_block_stop", "index": 0})
            stop, output = "end_turn", self.deltas
        await event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": output}})
        await event("message_stop", {"type": "message_stop"})

    # --- plumbing -------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        requests_seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
        return body

    @staticmethod
    async def _sse_start(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def request_transport(response: web.StreamResponse) -> Any:
    return response._req.transport  # type: ignore[union-attr]


# --- a native Responses endpoint (vLLM has one): text only, streamed or whole ------------------------


async def responses_native(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    requests_seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
    text = "native tok0 native tok1"
    item = {"type": "message", "id": "msg_up", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    whole = {"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
             "model": body.get("model"), "output": [item], "parallel_tool_calls": True, "tool_choice": "auto",
             "tools": [], "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 2,
                                    "total_tokens": PROMPT_TOKENS + 2}}
    if not body.get("stream"):
        return web.json_response(whole)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    started = {**whole, "status": "in_progress", "output": [], "usage": None}
    events = [("response.created", {"response": started}),
              ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress",
                                                                           "content": []}}),
              ("response.content_part.added", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                               "part": {"type": "output_text", "text": "", "annotations": []}}),
              *[("response.output_text.delta", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                                "delta": piece}) for piece in ("native tok0", " native tok1")],
              ("response.output_text.done", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                             "text": text}),
              ("response.content_part.done", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                              "part": item["content"][0]}),
              ("response.output_item.done", {"output_index": 0, "item": item}),
              ("response.completed", {"response": whole})]
    for number, (kind, fields) in enumerate(events):
        payload = {"type": kind, "sequence_number": number, **fields}
        await response.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())
    return response


async def embeddings(request: web.Request) -> web.Response:
    """One vector per input, its values made from the text (so a test can tell inputs apart)."""
    body = await request.json()
    requests_seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
    given = body.get("input")
    texts = [given] if isinstance(given, str) else list(given or [])
    data = [{"object": "embedding", "index": index, "embedding": [len(text) / 10, 0.5, -0.25]}
            for index, text in enumerate(texts)]
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}})


async def count_tokens(request: web.Request) -> web.Response:
    body = await request.json()
    requests_seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
    return web.json_response({"input_tokens": INPUT_TOKENS})


# --- faults: answers a broken engine gives (OpenAI chat only) -----------------------------------


async def _short_body(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Promises 1000 bytes, sends 100, closes: the connection breaks after the headers."""
    response = web.StreamResponse(headers={"content-type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"id": "x", "choices": [' + b" " * 75)
    request_transport(response).close()
    return response


async def _malformed_stream(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """One good chunk of text, then chunks its dialect does not allow (what the scenario names)."""
    scenario = scenario_of(body)
    response = await script._sse_start(request)
    good = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "ok "}}]}
    await script._send(response, good)
    await asyncio.sleep(script.delay)
    bad = {"badchoices": b'{"choices": "abc"}', "baddelta": b'{"choices": [{"index": 0, "delta": "x"}]}',
           "arraydata": b"[1, 2, 3]"}[scenario]
    await response.write(b"data: " + bad + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def _bad_usage(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A whole answer whose usage counts are not counts."""
    return web.json_response({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": "abc", "completion_tokens": 1}})


async def _hang(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """One chunk, then silence: an engine that hung mid-answer."""
    response = await script._sse_start(request)
    await script._send(response, {"id": "c", "object": "chat.completion.chunk",
                                  "choices": [{"index": 0, "delta": {"content": "then nothing"}}]})
    await asyncio.sleep(3600)
    return response


async def _empty_400(script: Script, request: web.Request, body: dict[str, Any]) -> web.Response:
    """A refusal with no body at all (what llama.cpp's server did for an id it did not like)."""
    return web.Response(status=400)


# --- the fault matrix (tests/inference/test_fault_matrix.py): streamed or whole, as the request asks ------


def _partial_pieces(body: dict[str, Any]) -> list[bytes]:
    """The answer the matrix's faults begin, cut in pieces: SSE chunks of ``part{i} ``, or its JSON in 8 slices."""
    if body.get("stream"):
        return [b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]}).encode() + b"\n\n"
            for i in range(8)]
    whole = json.dumps({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(f"part{i} " for i in range(8))},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 8}}).encode()
    size = len(whole) // 8 + 1
    return [whole[i:i + size] for i in range(0, len(whole), size)]


async def _start_partial(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    kind = "text/event-stream" if body.get("stream") else "application/json"
    response = web.StreamResponse(headers={"content-type": kind})
    await response.prepare(request)
    return response


async def _hang_first(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """The request is read, then nothing comes back, not even the status line: an engine stuck before its first byte."""
    await asyncio.sleep(3600)
    return web.Response()


async def _hang_mid(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Three pieces of the answer, then silence with the connection open."""
    response = await _start_partial(request, body)
    for piece in _partial_pieces(body)[:3]:
        await response.write(piece)
        await asyncio.sleep(script.delay)
    await asyncio.sleep(3600)
    return response


async def _die_after_five(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Five pieces of the answer, then the connection is cut (the chunked body never ends)."""
    response = await _start_partial(request, body)
    for piece in _partial_pieces(body)[:5]:
        await response.write(piece)
        await asyncio.sleep(script.delay)
    request_transport(response).close()
    return response


async def _not_an_event_stream(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Malformed SSE: one good event, then a proxy's HTML error page in the stream (lines SSE ignores), and the
    body ends with no [DONE] and no finish_reason. Asked for a whole answer, the same bytes come, as an event stream."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    stream = {**body, "stream": True}
    await response.write(_partial_pieces(stream)[0])
    await asyncio.sleep(script.delay)
    await response.write(b"<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1>"
                         b"</body></html>\n\n")
    return response


async def _not_json(script: Script, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Invalid JSON: streamed, two good frames, then a frame whose data is cut-off JSON, then [DONE]; whole, a
    complete 200 body (with its Content-Length) that is not JSON."""
    if not body.get("stream"):
        return web.Response(body=b'{"id": "c", "object": "chat.completion", "choices": [{"index": 0, "mess',
                            content_type="application/json")
    response = await _start_partial(request, body)
    for piece in _partial_pieces(body)[:2]:
        await response.write(piece)
        await asyncio.sleep(script.delay)
    await response.write(b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "del\n\n')
    await response.write(b"data: [DONE]\n\n")
    return response


FAULTS = {"shortbody": _short_body, "badchoices": _malformed_stream, "baddelta": _malformed_stream,
          "arraydata": _malformed_stream, "badusage": _bad_usage, "hang": _hang, "empty400": _empty_400,
          "hangfirst": _hang_first, "hangmid": _hang_mid, "die5": _die_after_five, "badsse": _not_an_event_stream,
          "notjson": _not_json}


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(requests_seen)


async def clear_requests(request: web.Request) -> web.Response:
    requests_seen.clear()
    disconnects.clear()
    return web.json_response({"cleared": True})


async def list_disconnects(request: web.Request) -> web.Response:
    return web.json_response(disconnects)


def build_app(deltas: int, delay: float) -> web.Application:
    script = Script(deltas, delay)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([
        web.post("/v1/chat/completions", script.chat),
        web.post("/v1/completions", script.completions),
        web.post("/v1/messages", script.messages),
        web.post("/v1/responses", responses_native),
        web.post("/v1/embeddings", embeddings),
        web.post("/v1/messages/count_tokens", count_tokens),
        web.get("/v1/models", models),
        web.get("/health", health),
        web.get("/_requests", list_requests),
        web.delete("/_requests", clear_requests),
        web.get("/_disconnects", list_disconnects),
    ])
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--deltas", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=5)
    parser.add_argument("--force-scenario")
    args = parser.parse_args()
    if args.force_scenario:
        FORCED.append(args.force_scenario)
    app = build_app(args.deltas, args.delay_ms / 1000)
    # handler_cancellation: a client that goes away cancels its handler, which
    # is what the disconnect tests observe.
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True, access_log=None)


if __name__ == "__main__":
    main()
