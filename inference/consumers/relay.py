"""The relaying endpoints: /v1/chat/completions, /v1/completions, /v1/messages.

One path for all three: validate, decide which serve answers, open the
upstream, then exactly one of: an upstream error in the client's dialect, the
whole answer, or the stream. A stream's every upstream event reaches the
client as its own chunk the moment it arrives; same-dialect events go out
byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from inference.admission import ADMISSION
from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import (
    Dialect,
    InvalidRequest,
    NotFound,
    Unavailable,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
)
from inference.exchange import Exchange
from inference.protocol import parse_json_object, validate_chat, validate_completion, validate_messages
from inference.relay import UpstreamError, UpstreamTimedOut, chunks, open_upstream, read_capped
from routing.decide import decide
from routing.dialects import DialectError, UpstreamProtocolError
from routing.dialects.sse import SSEDecoder, encode
from serves.catalog import SERVE_CATALOG

ERROR_BODY_LIMIT = 64 * 1024
WHOLE_ANSWER_LIMIT = 64 * 1024 * 1024
STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                  (b"x-accel-buffering", b"no")]


class RelayConsumer(FrontDoorConsumer):
    endpoint = "chat"
    upstream_dialects = frozenset({"openai", "anthropic"})

    def validate(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def respond(self, raw: bytes, principal: Principal | None) -> None:
        body = parse_json_object(raw)
        self.validate(body)
        serves = await SERVE_CATALOG.get()
        decision = decide(body.get("model"), serves, dialects=self.upstream_dialects)
        if decision.unknown_model:  # perhaps a serve added a moment ago: look again before a 404
            serves = await SERVE_CATALOG.get(force=True)
            decision = decide(body.get("model"), serves, dialects=self.upstream_dialects)
        if not decision.candidates:
            known = ", ".join(serve.name for serve in serves) or "none"
            if decision.unknown_model:
                raise NotFound(f"The model {body.get('model')!r} does not exist. Serves you can name: {known}.",
                               param="model", code="model_not_found")
            raise Unavailable(f"No serve can answer: {'; '.join(decision.notes)}. Serves: {known}.")
        serve = decision.candidates[0].serve
        self.served_by = serve.name.encode()
        exchange = Exchange(self.dialect, self.endpoint, body, serve, self.request_id, dict(self.scope["headers"]))
        try:
            upstream_request = exchange.upstream_request()
        except DialectError as exc:
            raise InvalidRequest(f"{exc.message} (serve {serve.name} speaks {serve.dialect}).",
                                 param=exc.param) from None
        with ADMISSION.admit(principal.key_id if principal else None):
            try:
                async with open_upstream(upstream_request) as upstream:
                    if upstream.status >= 400:
                        payload = await read_capped(upstream, ERROR_BODY_LIMIT)
                        await self._upstream_error(exchange, upstream.status, payload)
                    elif exchange.stream:
                        await self._stream(exchange, upstream)
                    else:
                        await self._whole(exchange, upstream)
            except UpstreamTimedOut as exc:
                raise UpstreamTimeout(f"Serve {serve.name} did not answer in time: {exc}.") from None
            except UpstreamError as exc:
                raise UpstreamFailed(f"Serve {serve.name} could not be reached: {exc}.") from None

    def base_headers(self, content_type: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
        headers = super().base_headers(content_type)
        served_by = getattr(self, "served_by", None)
        if served_by:
            headers.append((b"x-anvil-served-by", served_by))
        return headers

    async def _upstream_error(self, exchange: Exchange, status: int, payload: bytes) -> None:
        message = exchange.upstream_error_message(payload)
        name = exchange.serve.name
        if status >= 500:
            raise UpstreamFailed(f"Serve {name} failed (HTTP {status}): {message}")
        if status in (401, 403, 404):
            # The client's request is fine; Anvil's configuration of the serve is not.
            raise UpstreamFailed(f"Serve {name} refused Anvil (HTTP {status}): {message}. "
                                 "Check the serve's api_key_env and served model name.")
        if exchange.same_dialect:
            await self.send_complete(status, payload, self.base_headers())
            return
        raise UpstreamRejected(f"Serve {name} rejected the request (HTTP {status}): {message}", status)

    async def _whole(self, exchange: Exchange, upstream: Any) -> None:
        if exchange.same_dialect:
            content_type = upstream.headers.get("content-type", "application/json").encode("latin-1")
            await self.send_headers(status=upstream.status, headers=self.base_headers(content_type))
            async for data in chunks(upstream):
                await self.send_body(data, more_body=True)
            await self.send_body(b"")
            return
        payload = await read_capped(upstream, WHOLE_ANSWER_LIMIT)
        try:
            answer = json.loads(payload)
            translated = exchange.translate_answer(answer)
        except (json.JSONDecodeError, UnicodeDecodeError, UpstreamProtocolError, AttributeError) as exc:
            raise UpstreamFailed(f"Serve {exchange.serve.name} answered something that is not a valid "
                                 f"{exchange.upstream_dialect} response: {exc}") from None
        await self.send_json(upstream.status, translated)

    async def _stream(self, exchange: Exchange, upstream: Any) -> None:
        await self.send_headers(status=200, headers=self.base_headers(STREAM_HEADERS[0][1]) + STREAM_HEADERS[1:])
        decoder = SSEDecoder()
        translator = None if exchange.same_dialect else exchange.stream_translator()
        try:
            async for data in chunks(upstream):
                for event in decoder.feed(data):
                    if translator is None:
                        await self.send_body(event.raw, more_body=True)
                    else:
                        for out in self._translate(translator, event):
                            await self.send_body(out, more_body=True)
            tail = decoder.close()
            if tail is not None:
                if translator is None:
                    await self.send_body(tail.raw, more_body=True)
                else:
                    for out in self._translate(translator, tail):
                        await self.send_body(out, more_body=True)
            if translator is not None:
                for out in translator.finish():
                    await self.send_body(out, more_body=True)
        except (UpstreamError, UpstreamProtocolError, ValueError) as exc:
            await self.send_body(self._stream_error(exchange, translator, str(exc)), more_body=True)
        await self.send_body(b"")

    @staticmethod
    def _translate(translator: Any, event: Any) -> list[bytes]:
        if event.data == "[DONE]":
            return translator.finish()
        payload = event.json()
        if isinstance(payload, dict) and payload.get("type") == "error":
            error = payload.get("error") or {}
            raise UpstreamProtocolError(f"the upstream reported: {error.get('message', 'an error')}")
        return translator.feed(payload)

    def _stream_error(self, exchange: Exchange, translator: Any, detail: str) -> bytes:
        """The error event that ends a broken stream, in the client's dialect."""
        message = f"Serve {exchange.serve.name} failed mid-stream: {detail}"
        if translator is not None:
            kind = "api_error" if self.dialect is Dialect.ANTHROPIC else "server_error"
            return b"".join(translator.error(kind, message))
        if self.dialect is Dialect.ANTHROPIC:
            return encode({"type": "error", "error": {"type": "api_error", "message": message}}, "error")
        return encode({"error": {"message": message, "type": "server_error", "param": None,
                                 "code": "upstream_error"}})


class ChatCompletionsConsumer(RelayConsumer):
    endpoint = "chat"

    def validate(self, body: dict[str, Any]) -> None:
        validate_chat(body)


class CompletionsConsumer(RelayConsumer):
    endpoint = "completions"
    upstream_dialects = frozenset({"openai"})

    def validate(self, body: dict[str, Any]) -> None:
        validate_completion(body)


class MessagesConsumer(RelayConsumer):
    endpoint = "messages"
    dialect = Dialect.ANTHROPIC

    def validate(self, body: dict[str, Any]) -> None:
        validate_messages(body)
