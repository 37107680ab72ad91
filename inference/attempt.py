"""One attempt at one serve: open the upstream, then relay (verdict allow) or hold the answer in a
commit window, verify it, and replay it or give it up for the next candidate (allow-with-verify).

The client never sees bytes from an attempt that does not commit: an upstream that fails
before committing, or an answer that fails verification, leaves the response untouched so
the next candidate can answer. Once an attempt commits, what follows is its to finish,
including an error event if the upstream breaks mid-stream.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.errors import (
    FrontDoorError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
)
from inference.exchange import Exchange
from inference.relay import (
    UpstreamError,
    UpstreamRequest,
    UpstreamTimedOut,
    chunks,
    open_upstream,
    read_capped,
)
from routing.dialects import UpstreamProtocolError
from routing.dialects.answers import StreamAccumulator, from_anthropic, from_openai, usage_of
from routing.dialects.sse import SSEDecoder, SSEEvent, encode
from routing.verify import Expectations, verify

ERROR_BODY_LIMIT = 64 * 1024
WHOLE_ANSWER_LIMIT = 64 * 1024 * 1024
STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
EVENT_STREAM = b"text/event-stream; charset=utf-8"


@dataclass
class AttemptOutcome:
    serve: str
    committed: bool = False
    label: str = "served"  # served | fallback | error | timeout | unreachable
    upstream_failed: bool = False  # counts against the serve's circuit breaker
    error: FrontDoorError | None = None
    labels: list[str] = field(default_factory=list)  # verification failures
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes_out: int = 0
    first_byte_at: float | None = None
    started: float = field(default_factory=time.perf_counter)

    def as_log(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"serve": self.serve, "outcome": self.label, "status": self.status,
                                 "ms": round((time.perf_counter() - self.started) * 1000, 3)}
        if self.labels:
            entry["verify"] = self.labels
        return entry

    def usage(self, found: tuple[int | None, int | None] | None) -> None:
        if found is not None:
            prompt, completion = found
            self.prompt_tokens = prompt if prompt is not None else self.prompt_tokens
            self.completion_tokens = completion if completion is not None else self.completion_tokens


def expectations(body: dict[str, Any]) -> Expectations:
    names = frozenset(
        ((tool.get("function") or {}).get("name") or tool.get("name") or "")
        for tool in body.get("tools") or [] if isinstance(tool, dict))
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and "type" in choice and choice.get("type") != "function":
        choice = {"any": "required", "none": "none", "auto": "auto"}.get(choice["type"]) or (
            {"function": {"name": choice.get("name")}} if choice["type"] == "tool" else None)
    limit = any(body.get(k) is not None for k in ("max_tokens", "max_completion_tokens"))
    return Expectations(limit, names, choice)


async def run_attempt(consumer: Any, exchange: Exchange, request: UpstreamRequest, *,
                      verify: bool) -> AttemptOutcome:
    out = AttemptOutcome(exchange.serve.name)
    name = exchange.serve.name
    try:
        async with open_upstream(request) as upstream:
            out.status = upstream.status
            if upstream.status >= 400:
                await _upstream_error(consumer, exchange, out, await read_capped(upstream, ERROR_BODY_LIMIT))
            elif exchange.stream:
                await _stream(consumer, exchange, upstream, out, verify)
            else:
                await _whole(consumer, exchange, upstream, out, verify)
    except UpstreamTimedOut as exc:
        _failed(out, "timeout", UpstreamTimeout(f"Serve {name} did not answer in time: {exc}."))
    except UpstreamError as exc:
        _failed(out, "unreachable", UpstreamFailed(f"Serve {name} could not be reached: {exc}."))
    return out


def _failed(out: AttemptOutcome, label: str, error: FrontDoorError) -> None:
    out.label, out.error, out.upstream_failed = label, error, True


async def _upstream_error(consumer: Any, exchange: Exchange, out: AttemptOutcome, payload: bytes) -> None:
    status, name = out.status or 502, exchange.serve.name
    message = exchange.upstream_error_message(payload)
    if status >= 500:
        _failed(out, "fallback", UpstreamFailed(f"Serve {name} failed (HTTP {status}): {message}"))
        return
    if status in (401, 403, 404):
        # The client's request is fine; Anvil's configuration of this serve is not: try another.
        _failed(out, "fallback", UpstreamFailed(f"Serve {name} refused Anvil (HTTP {status}): {message}. "
                                                "Check the serve's api_key_env and served model name."))
        return
    out.committed, out.label = True, "error"
    if exchange.same_dialect:
        await consumer.send_complete(status, payload, consumer.base_headers())
        out.bytes_out = len(payload)
    else:
        out.error = UpstreamRejected(f"Serve {name} rejected the request (HTTP {status}): {message}", status)


async def _whole(consumer: Any, exchange: Exchange, upstream: Any, out: AttemptOutcome, verify: bool) -> None:
    if exchange.same_dialect and not verify:
        # Relay the bytes as they arrive; keep a copy only to read the usage afterwards.
        content_type = upstream.headers.get("content-type", "application/json").encode("latin-1")
        await consumer.send_headers(status=upstream.status, headers=consumer.base_headers(content_type))
        out.committed = True
        copy = []
        async for data in chunks(upstream):
            out.first_byte_at = out.first_byte_at or time.perf_counter()
            await consumer.send_body(data, more_body=True)
            out.bytes_out += len(data)
            copy.append(data)
        await consumer.send_body(b"")
        out.usage(_usage_from_json(b"".join(copy), exchange.upstream_dialect))
        return
    payload = await read_capped(upstream, WHOLE_ANSWER_LIMIT)
    try:
        answer = json.loads(payload)
        if verify:
            reduced = from_anthropic(answer) if exchange.upstream_dialect == "anthropic" else from_openai(answer)
            out.labels = _verify(reduced, exchange)
            if out.labels:
                out.label = "fallback"
                return
        body = payload if exchange.same_dialect else json.dumps(exchange.translate_answer(answer)).encode()
    except (json.JSONDecodeError, UnicodeDecodeError, UpstreamProtocolError, AttributeError, TypeError) as exc:
        _failed(out, "fallback", UpstreamFailed(f"Serve {exchange.serve.name} answered something that is not a "
                                                f"valid {exchange.upstream_dialect} response: {exc}"))
        return
    out.committed = True
    out.first_byte_at = time.perf_counter()
    out.usage(usage_of(answer, exchange.upstream_dialect))
    content_type = b"application/json"
    await consumer.send_complete(upstream.status, body, consumer.base_headers(content_type))
    out.bytes_out = len(body)


def _verify(answer: Any, exchange: Exchange) -> list[str]:
    return verify(answer, expectations(exchange.body))


async def _stream(consumer: Any, exchange: Exchange, upstream: Any, out: AttemptOutcome, verify: bool) -> None:
    decoder = SSEDecoder()
    translator = None if exchange.same_dialect else exchange.stream_translator()
    accumulator = StreamAccumulator(exchange.upstream_dialect) if verify else None
    held: list[bytes] = []
    held_bytes = 0
    committed = not verify
    window = settings.ANVIL_COMMIT_WINDOW_BYTES

    async def emit(data: bytes) -> None:
        nonlocal held_bytes, committed
        if committed:
            await _send(consumer, out, data)
            return
        held.append(data)
        held_bytes += len(data)
        if held_bytes > window:  # too big to hold: commit unverified rather than buffer without bound
            out.labels.append("commit-window-overflow")
            committed = True
            await _replay(consumer, out, held)

    if committed:
        await _start(consumer, out)
    try:
        async for data in chunks(upstream):
            for event in decoder.feed(data):
                for piece in _handle(event, exchange, translator, accumulator, out):
                    await emit(piece)
        tail = decoder.close()
        if tail is not None:
            for piece in _handle(tail, exchange, translator, accumulator, out):
                await emit(piece)
        if translator is not None:
            for piece in translator.finish():
                await emit(piece)
    except (UpstreamError, UpstreamProtocolError, ValueError) as exc:
        if not committed:
            _failed(out, "fallback", UpstreamFailed(f"Serve {exchange.serve.name} failed mid-stream: {exc}"))
            return
        out.label = "error"
        await _send(consumer, out, _stream_error(consumer, exchange, translator, str(exc)))
        await consumer.send_body(b"")
        return
    if not committed and accumulator is not None:
        out.labels = _verify(accumulator.answer(), exchange)
        if out.labels:
            out.label = "fallback"
            return
        await _replay(consumer, out, held)
    await consumer.send_body(b"")


def _handle(event: SSEEvent, exchange: Exchange, translator: Any, accumulator: StreamAccumulator | None,
            out: AttemptOutcome) -> list[bytes]:
    if event.data == "[DONE]":
        return translator.finish() if translator is not None else [event.raw]
    payload: Any = None
    if accumulator is not None or translator is not None or b"usage" in event.raw:
        payload = event.json()
        if isinstance(payload, dict) and payload.get("type") == "error":
            raise UpstreamProtocolError(f"the upstream reported: {(payload.get('error') or {}).get('message')}")
        out.usage(usage_of(payload, exchange.upstream_dialect))
        if accumulator is not None:
            accumulator.feed(payload)
    if translator is None:
        return [event.raw]
    return translator.feed(payload)


async def _start(consumer: Any, out: AttemptOutcome) -> None:
    out.committed = True
    await consumer.send_headers(status=200, headers=consumer.base_headers(EVENT_STREAM) + STREAM_HEADERS)


async def _send(consumer: Any, out: AttemptOutcome, data: bytes) -> None:
    out.first_byte_at = out.first_byte_at or time.perf_counter()
    out.bytes_out += len(data)
    await consumer.send_body(data, more_body=True)


async def _replay(consumer: Any, out: AttemptOutcome, held: list[bytes]) -> None:
    await _start(consumer, out)
    for piece in held:
        await _send(consumer, out, piece)
    held.clear()


def _stream_error(consumer: Any, exchange: Exchange, translator: Any, detail: str) -> bytes:
    """The error event that ends a broken stream, in the client's dialect."""
    message = f"Serve {exchange.serve.name} failed mid-stream: {detail}"
    anthropic_client = exchange.client_dialect.value == "anthropic"
    if translator is not None:
        return b"".join(translator.error("api_error" if anthropic_client else "server_error", message))
    if anthropic_client:
        return encode({"type": "error", "error": {"type": "api_error", "message": message}}, "error")
    return encode({"error": {"message": message, "type": "server_error", "param": None, "code": "upstream_error"}})


def _usage_from_json(payload: bytes, dialect: str) -> tuple[int | None, int | None] | None:
    try:
        return usage_of(json.loads(payload), dialect)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
