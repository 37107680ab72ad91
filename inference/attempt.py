"""One attempt at one serve: open the upstream, then relay the answer under a commit rule, or give it
up for the next candidate.

The commit rule says how much of an answer is held before the client sees its first byte:

* ``off``: nothing; a stream's bytes go to the client as they arrive;
* ``prefix``: a stream is held until its first content (text, reasoning or a tool call) or
  ``PREFIX_BYTES`` of preamble, whichever comes first: enough to catch a connection error, a 5xx,
  an empty answer or a malformed first frame, and fall back on them, at no cost to the first token;
* ``strict``: the whole answer is held in a commit window, reduced to text, tool calls and finish
  reason, verified (``routing.verify``), then replayed or given up.

A whole answer is always read whole and checked (JSON its dialect allows) before it commits, and
verified too where the verdict asks. A stream that stops without saying its answer is complete
(``[DONE]``, a finish reason, ``message_stop``) failed, wherever it stopped.

The client never sees bytes from an attempt that does not commit. Once an attempt commits, what
follows is its to finish: if the upstream breaks or sends something malformed, the attempt ends the
response itself (an error event in the client's dialect) and says so in its outcome. Nothing raises
past ``run_attempt``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from django.conf import settings

from anvil_site import tracing
from inference.errors import (
    FrontDoorError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    error_body,
    error_event,
)
from inference.exchange import Exchange
from inference.upstream_client import UpstreamError, UpstreamRequest, UpstreamResponse, UpstreamTimedOut, open_upstream
from inference.wire import Dialect, UpstreamProtocolError
from inference.wire.answers import REDUCERS, StreamAccumulator, usage_of
from inference.wire.sse import SSEDecoder, SSEEvent
from inference.wire.upstream import checked_answer, checked_event
from routing.verify import Answer, Expectations, verify

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 64 * 1024
WHOLE_ANSWER_LIMIT = 64 * 1024 * 1024
PREFIX_BYTES = 1024  # preamble held at most before the first content (a role chunk, message_start, …)
STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
EVENT_STREAM = b"text/event-stream; charset=utf-8"
# A serve's 4xx that is about its own limits, not the client's request: another serve may fit it.
_OWN_LIMITS = re.compile(r"context|max_tokens|max_completion_tokens|too long|maximum (?:input )?length|"
                         r"exceeds? the (?:model|available)", re.IGNORECASE)


class CommitRule(StrEnum):
    OFF = "off"
    PREFIX = "prefix"
    STRICT = "strict"


class ResponseSink(Protocol):
    """Where an attempt writes the client's response (a front-door consumer)."""

    response_started: bool
    timing: dict[str, float]  # Server-Timing phases, in ms

    def base_headers(self, content_type: bytes = ...) -> list[tuple[bytes, bytes]]: ...

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None: ...

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None: ...

    async def send_complete(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...


@dataclass
class AttemptOutcome:
    serve: str
    committed: bool = False
    label: str = "served"  # served | fallback | error | timeout | unreachable
    upstream_failed: bool = False  # counts against the serve's circuit breaker
    error: FrontDoorError | None = None  # why an uncommitted attempt gave up
    labels: list[str] = field(default_factory=list)  # verification failures
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes_out: int = 0
    first_byte_at: float | None = None
    started: float = field(default_factory=time.perf_counter)
    detail: str = ""  # what broke after the commit (the client was told in-band)
    # The whole answer reduced to text and tool calls, kept only for an attempt sampled for live
    # calibration (inference/calibration.py); never logged, never in the decision record.
    answer: Answer | None = None

    def as_log(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"serve": self.serve, "outcome": self.label, "status": self.status,
                                 "ms": round((time.perf_counter() - self.started) * 1000, 3)}
        if self.labels:
            entry["verify"] = self.labels
        if self.detail:
            entry["detail"] = self.detail[:300]
        return entry

    def usage(self, found: tuple[int | None, int | None] | None) -> None:
        if found is not None:
            prompt, completion = found
            self.prompt_tokens = prompt if prompt is not None else self.prompt_tokens
            self.completion_tokens = completion if completion is not None else self.completion_tokens

    def give_up(self, label: str, error: FrontDoorError, *, upstream_failed: bool = True) -> None:
        self.label, self.error, self.upstream_failed = label, error, upstream_failed


def relabel(payload: dict[str, Any], model: str) -> bool:
    """Put ``model`` (the public id of the model that answered) where a passthrough answer names the engine's own
    id: an OpenAI answer or chunk, an Anthropic message or its ``message_start``, a Responses event's response.
    True when something changed (the bytes must then be written again)."""
    holder = payload
    if isinstance(payload.get("message"), dict):
        holder = payload["message"]
    elif isinstance(payload.get("response"), dict):
        holder = payload["response"]
    if not isinstance(holder.get("model"), str) or holder["model"] == model:
        return False
    holder["model"] = model
    return True


def _relabelled(event: SSEEvent, payload: dict[str, Any], model: str) -> bytes:
    if not relabel(payload, model):
        return event.raw  # as received, byte for byte
    head = f"event: {event.event}\n" if event.event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def ends_answer(payload: dict[str, Any], wire: str) -> bool:
    """Whether this (checked) stream event says the answer is complete, in the upstream's wire."""
    kind = payload.get("type")
    if wire == "anthropic":
        return kind == "message_stop" or (kind == "message_delta" and bool((payload.get("delta") or {}).get(
            "stop_reason")))
    if wire == "responses":
        return kind in ("response.completed", "response.incomplete")
    return any(isinstance(choice, dict) and choice.get("finish_reason") for choice in payload.get("choices") or ())


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


async def run_attempt(sink: ResponseSink, exchange: Exchange, request: UpstreamRequest, *,
                      rule: CommitRule, verify_whole: bool, keep_answer: bool = False,
                      out: AttemptOutcome | None = None) -> AttemptOutcome:
    """One try at ``exchange.serve``; never raises (a cancelled request aside).

    ``keep_answer``: the attempt is sampled for live calibration; a whole answer that reaches the
    client is also kept, reduced, in ``outcome.answer``. ``out``: the outcome to fill in, so that
    a caller whose client leaves mid-answer still knows what had been sent."""
    out = out or AttemptOutcome(exchange.serve.name)
    name = exchange.serve.name
    try:
        with tracing.span("anvil.upstream", {"anvil.serve": name, "url.full": request.url}):
            await _relay(sink, exchange, tracing.inject_into(request), out, rule, verify_whole, keep_answer)
    except UpstreamTimedOut as exc:
        await _broken(sink, out, "timeout", UpstreamTimeout(f"Serve {name} did not answer in time: {exc}."))
    except UpstreamError as exc:
        await _broken(sink, out, "unreachable", UpstreamFailed(f"Serve {name} could not be reached: {exc}."))
    except UpstreamProtocolError as exc:
        await _broken(sink, out, "fallback", UpstreamFailed(
            f"Serve {name} answered something that is not a valid {exchange.upstream_wire} response: {exc}"))
    except Exception as exc:  # a case the checks above missed: the client still gets an answer
        log.exception("attempt at serve %s failed unexpectedly", name)
        await _broken(sink, out, "fallback", UpstreamFailed(f"Serve {name}'s answer could not be relayed: "
                                                            f"{type(exc).__name__}: {exc}"))
    return out


async def _relay(sink: ResponseSink, exchange: Exchange, request: UpstreamRequest, out: AttemptOutcome,
                 rule: CommitRule, verify_whole: bool, keep_answer: bool) -> None:
    """Open the upstream and relay its answer (whole, streamed, or its error) under the attempt's rules."""
    async with open_upstream(request) as upstream:
        out.status = upstream.status
        sink.timing["upstream"] = (time.perf_counter() - out.started) * 1000  # to the upstream's headers
        if upstream.status >= 400:
            await _upstream_error(sink, exchange, out, await upstream.read_capped(ERROR_BODY_LIMIT))
        elif exchange.stream:
            await _Stream(sink, exchange, upstream, out, rule, keep_answer).run()
        else:
            await _whole(sink, exchange, upstream, out, verify_whole, keep_answer)


async def _broken(sink: ResponseSink, out: AttemptOutcome, label: str, error: FrontDoorError) -> None:
    """An attempt that failed: before the commit, give it up; after, end the response that began."""
    if not out.committed:
        out.give_up(label, error)
        return
    out.label, out.upstream_failed, out.detail = "error" if label == "fallback" else label, True, error.message
    await _end_body(sink)


async def _end_body(sink: ResponseSink) -> None:
    try:
        await sink.send_body(b"", more_body=False)
    except Exception:  # the client is gone: nothing left to tell it
        log.debug("could not end a response", exc_info=True)


async def _upstream_error(sink: ResponseSink, exchange: Exchange, out: AttemptOutcome, payload: bytes) -> None:
    status, name = out.status or 502, exchange.serve.name
    message = exchange.upstream_error_message(payload)
    if status >= 500:
        out.give_up("fallback", UpstreamFailed(f"Serve {name} failed (HTTP {status}): {message}"))
        return
    if status in (401, 403, 404):
        # The client's request is fine; Anvil's configuration of this serve is not: try another.
        out.give_up("fallback", UpstreamFailed(f"Serve {name} refused Anvil (HTTP {status}): {message}. "
                                               "Check the serve's api_key_env and served model name."))
        return
    rejected = UpstreamRejected(f"Serve {name} rejected the request (HTTP {status}): {message}", status)
    if status in (400, 413, 422) and _OWN_LIMITS.search(message):
        # Too long for this serve's context, or max_tokens past its limit: a bigger serve may take it.
        # Not the serve's fault either: the breaker does not count it.
        out.give_up("fallback", rejected, upstream_failed=False)
        return
    if sink.response_started:  # a queue's heartbeats began the stream: the consumer ends it with this error
        out.give_up("error", rejected, upstream_failed=False)
        return
    out.committed, out.label = True, "error"
    if exchange.passthrough and _in_dialect(payload, exchange.client_dialect):
        await sink.send_complete(status, payload, sink.base_headers())
        out.bytes_out = len(payload)
    else:  # empty, not JSON, or another shape (a worker's {"detail"}): told in the client's own dialect
        body = error_body(rejected, exchange.client_dialect)
        await sink.send_complete(status, body, sink.base_headers())
        out.bytes_out = len(body)


def _in_dialect(payload: bytes, dialect: Dialect) -> bool:
    try:
        data = json.loads(payload)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return False
    return dialect is not Dialect.ANTHROPIC or data.get("type") == "error"


async def _whole(sink: ResponseSink, exchange: Exchange, upstream: UpstreamResponse, out: AttemptOutcome,
                 verify_whole: bool, keep_answer: bool = False) -> None:
    # Read whole and checked before the client gets a byte, whatever the verdict: half a JSON document is
    # of no use to a client, and until the last byte a cut, a silence or a body that is not JSON can still
    # fall back (relayed as it came, an OpenAI SDK got a 200 it could not parse, with a healthy serve behind).
    payload = await upstream.read_capped(WHOLE_ANSWER_LIMIT)
    try:
        answer = json.loads(payload)
    except ValueError as exc:
        raise UpstreamProtocolError(f"not JSON ({exc})") from None
    checked_answer(answer, exchange.upstream_wire)
    reduced = REDUCERS[exchange.upstream_wire](answer) if verify_whole or keep_answer else None
    if verify_whole:
        assert reduced is not None
        out.labels = verify(reduced, expectations(exchange.body))
        if out.labels:
            out.label = "fallback"
            return
    if exchange.passthrough:
        body = json.dumps(answer).encode() if relabel(answer, exchange.serve.model) else payload
    else:
        body = json.dumps(exchange.translate_answer(answer)).encode()
    out.committed = True
    out.first_byte_at = time.perf_counter()
    out.usage(usage_of(answer, exchange.upstream_wire))
    await sink.send_complete(upstream.status, body, sink.base_headers())
    out.bytes_out = len(body)
    out.answer = reduced if keep_answer else None


class _Stream:
    """One streamed answer, relayed event by event under the commit rule."""

    def __init__(self, sink: ResponseSink, exchange: Exchange, upstream: UpstreamResponse, out: AttemptOutcome,
                 rule: CommitRule, keep_answer: bool = False) -> None:
        self.sink, self.exchange, self.upstream, self.out, self.rule = sink, exchange, upstream, out, rule
        self.translator = None if exchange.passthrough else exchange.stream_translator()
        # The text is added up only where it is needed: to verify before the commit, or for a
        # sampled attempt (live calibration), whose whole answer is kept once the client has it.
        self.keep_answer = keep_answer
        self.accumulator = (StreamAccumulator(exchange.upstream_wire) if rule is not CommitRule.OFF or keep_answer
                            else None)
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.ended = False  # the upstream said its answer is whole: [DONE], a finish reason, message_stop

    async def run(self) -> None:
        out = self.out
        if self.rule is CommitRule.OFF:
            await self._commit()
        try:
            decoder = SSEDecoder()
            async for data in self.upstream.chunks():
                for event in decoder.feed(data):
                    await self._event(event)
            tail = decoder.close()
            if tail is not None:
                await self._event(tail)
            if not self.ended:
                # A body that simply stops (a proxy's page spliced in, an engine that died behind a proxy that
                # closed the stream cleanly) is a cut answer, not a short one: never verified, never finished.
                raise UpstreamProtocolError("the stream ended before the answer did (no [DONE], no finish reason)")
            if self.translator is not None:
                await self._emit(self.translator.finish(), content=False)
        except Exception as exc:  # after the commit the client is owed an ending, whatever broke
            if not out.committed:
                raise  # run_attempt gives the attempt up: the next candidate may answer
            if not isinstance(exc, UpstreamError | ValueError):
                log.exception("stream from serve %s broke after the commit", self.exchange.serve.name)
            await self._end_with_error(exc)
            return
        if not out.committed:
            assert self.accumulator is not None
            out.labels = verify(self.accumulator.answer(), expectations(self.exchange.body))
            if out.labels:
                out.label = "fallback"
                return
            await self._commit()
        await self.sink.send_body(b"")
        if self.keep_answer and self.accumulator is not None:
            self.out.answer = self.accumulator.answer()

    async def _event(self, event: SSEEvent) -> None:
        exchange, out = self.exchange, self.out
        if event.data == "[DONE]":
            self.ended = True
            await self._emit(self.translator.finish() if self.translator is not None else [event.raw], content=False)
            return
        try:
            payload = checked_event(json.loads(event.data), exchange.upstream_wire)
        except ValueError as exc:
            raise UpstreamProtocolError(f"a stream event is not JSON ({exc})") from None
        if (payload.get("type") in ("error", "response.failed") or payload.get("error")
                or payload.get("object") == "error"):
            detail = payload.get("error") or (payload.get("response") or {}).get("error")
            message = detail.get("message") if isinstance(detail, dict) else detail or payload.get("message")
            raise UpstreamProtocolError(f"the upstream reported: {message}")
        out.usage(usage_of(payload, exchange.upstream_wire))
        self.ended = self.ended or ends_answer(payload, exchange.upstream_wire)
        content = False
        if self.accumulator is not None:
            before = self.accumulator.size
            self.accumulator.feed(payload)
            content = self.accumulator.size > before
        if self.translator is None:
            pieces = [_relabelled(event, payload, exchange.serve.model)]
        else:
            pieces = self.translator.feed(payload)
        await self._emit(pieces, content=content)

    async def _emit(self, pieces: list[bytes], *, content: bool) -> None:
        if self.out.committed:
            for piece in pieces:
                await self._send(piece)
            return
        self.held.extend(pieces)
        self.held_bytes += sum(len(piece) for piece in pieces)
        if self.rule is CommitRule.PREFIX and (content or self.held_bytes > PREFIX_BYTES):
            await self._commit()
        elif self.held_bytes > settings.ANVIL_COMMIT_WINDOW_BYTES:
            # Too big to hold: commit unverified rather than buffer without bound.
            self.out.labels.append("commit-window-overflow")
            await self._commit()

    async def _commit(self) -> None:
        self.out.committed = True
        if not self.sink.response_started:  # else a queue's heartbeats began the stream (inference/pool_wait.py)
            await self.sink.send_headers(status=200, headers=self.sink.base_headers(EVENT_STREAM) + STREAM_HEADERS)
        held, self.held = self.held, []
        for piece in held:
            await self._send(piece)

    async def _send(self, data: bytes) -> None:
        out = self.out
        out.first_byte_at = out.first_byte_at or time.perf_counter()
        out.bytes_out += len(data)
        await self.sink.send_body(data, more_body=True)

    async def _end_with_error(self, exc: BaseException) -> None:
        out, exchange = self.out, self.exchange
        detail = str(exc) or type(exc).__name__
        out.label = "timeout" if isinstance(exc, UpstreamTimedOut) else "error"
        out.upstream_failed, out.detail = True, detail
        message = f"Serve {exchange.serve.name} failed mid-stream: {detail}"
        event = error_event(UpstreamFailed(message), exchange.client_dialect)
        if self.translator is not None:
            anthropic = exchange.client_dialect is Dialect.ANTHROPIC
            try:  # the translator closes what it opened (a content block, a Responses item) first
                event = b"".join(self.translator.error("api_error" if anthropic else "server_error", message))
            except Exception:  # it could not: the plain error event still tells the client
                log.exception("serve %s: the translated error event could not be built", exchange.serve.name)
        try:
            await self._send(event)
        finally:
            await _end_body(self.sink)

