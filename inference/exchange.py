"""One request's way to its serve and back: the upstream URL, headers and body, and the translators.

Pass-through (the serve speaks what the client speaks): the client's JSON goes upstream with every
field kept (tools, tool_choice, unknown fields); only ``model`` becomes the serve's served model
name, and the serve's ``extra_body`` fills in what the client did not set. Otherwise the body is
translated by ``inference.wire``: Anthropic ↔ OpenAI chat, and Responses → chat (→ Anthropic).
A request for reasoning is switched on the way the serve declares (``inference.wire.reasoning``);
what cannot be sent is a note for the decision record, never dropped in silence.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.conf import settings

from inference.key_reach import REQUEST_FLAG
from inference.upstream_client import UpstreamRequest
from inference.wire import Dialect, anthropic_client, openai_client, reasoning, responses
from serves.catalog import ServeView
from serves.upstream_keys import upstream_auth_headers

# (what the upstream speaks on this request, the client's endpoint) -> the upstream's path
UPSTREAM_PATHS = {("openai", "chat"): "/chat/completions", ("openai", "completions"): "/completions",
                  ("anthropic", "chat"): "/messages", ("openai", "messages"): "/chat/completions",
                  ("anthropic", "messages"): "/messages", ("responses", "responses"): "/responses",
                  ("openai", "responses"): "/chat/completions", ("anthropic", "responses"): "/messages"}


@dataclass
class Exchange:
    client_dialect: Dialect
    endpoint: str  # "chat" | "completions" | "messages" | "responses"
    body: dict[str, Any]
    serve: ServeView
    request_id: str
    client_headers: dict[bytes, bytes]
    started: float = field(default_factory=time.perf_counter)  # the request's start (Responses' metrics)
    notes: list[str] = field(default_factory=list)  # what could not be translated, for the decision record

    @property
    def upstream_dialect(self) -> str:
        return self.serve.dialect

    @cached_property
    def upstream_wire(self) -> str:
        """What the upstream's answer is written in: ``openai`` (chat or completions), ``anthropic`` or
        ``responses`` (a serve that speaks the Responses API natively, sent a request in OpenAI's shape)."""
        if (self.endpoint == "responses" and self.serve.responses_api and self.serve.dialect == "openai"
                and not responses.is_pool_shaped(self.body)):
            return "responses"
        return self.serve.dialect

    @property
    def passthrough(self) -> bool:
        """Whether the client's body and the upstream's answer travel as they are."""
        if self.endpoint == "responses":
            return self.upstream_wire == "responses"
        return self.serve.dialect == self.client_dialect.value

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def client_model(self) -> str:
        """The ``model`` a translated answer carries: the model that answered (its public id), never the name the
        client asked for (``auto``, a preset, or a model that a fallback_to model answered for). A passthrough
        answer keeps the engine's own id."""
        return self.serve.model

    def upstream_request(self) -> UpstreamRequest:
        url = self.serve.base_url + UPSTREAM_PATHS[(self.upstream_wire, self.endpoint)]
        return UpstreamRequest(url, json.dumps(self._upstream_body(), ensure_ascii=False).encode(), self._headers(),
                               stream=self.stream)

    def _upstream_body(self) -> dict[str, Any]:
        served, serve = self.serve.served_model, self.serve
        if self.passthrough:
            body = dict(self.body)
            body["model"] = served
            body.pop(REQUEST_FLAG, None)  # Anvil's own gate (llm-pool's field), not the engine's
        elif self.endpoint == "responses":
            body = responses.request_to_chat(self.body, served)
            ask = responses.reasoning_ask(self.body)
            if serve.dialect == "anthropic":
                body = openai_client.request_to_anthropic(body, served, settings.ANVIL_DEFAULT_MAX_TOKENS)
                self.notes += reasoning.to_anthropic(body, ask, serve.thinking, serve.name)
            else:
                self.notes += reasoning.to_openai(body, ask, serve.thinking, serve.name)
        elif self.client_dialect is Dialect.ANTHROPIC:
            body = anthropic_client.request_to_openai(self.body, served)
            ask = reasoning.from_anthropic(self.body.get("thinking"))
            self.notes += reasoning.to_openai(body, ask, serve.thinking, serve.name)
        else:
            body = openai_client.request_to_anthropic(self.body, served, settings.ANVIL_DEFAULT_MAX_TOKENS)
            effort = self.body.get("reasoning_effort") or (self.body.get("reasoning") or {}).get("effort")
            self.notes += reasoning.to_anthropic(body, reasoning.from_effort(effort), serve.thinking, serve.name)
        for key, value in self.serve.extra_body.items():
            body.setdefault(key, value)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-request-id": upstream_request_id(self.request_id),
                   "accept": "text/event-stream" if self.stream else "application/json"}
        headers.update(upstream_auth_headers(self.upstream_dialect, self.serve.api_key_env))
        if self.upstream_dialect == "anthropic" and self.passthrough:
            # An Anthropic client's own protocol version and betas reach an Anthropic upstream.
            for name in ("anthropic-version", "anthropic-beta"):
                value = self.client_headers.get(name.encode())
                if value:
                    headers[name] = value.decode("latin-1")
        return headers

    def _shell(self) -> responses.ResponseShell:
        return responses.ResponseShell(self.body, self.client_model, self.started)

    def translate_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        if self.endpoint == "responses":
            chat = answer if self.serve.dialect == "openai" else openai_client.response_to_openai(answer,
                                                                                                 self.client_model)
            return responses.response_from_chat(chat, self._shell())
        if self.client_dialect is Dialect.ANTHROPIC:
            return anthropic_client.response_to_anthropic(answer, self.client_model)
        return openai_client.response_to_openai(answer, self.client_model)

    def stream_translator(self) -> Any:
        """Upstream event payloads in, the client's SSE events out (``feed``, ``finish``, ``error``)."""
        if self.endpoint == "responses":
            to_responses = responses.StreamToResponses(self._shell())
            if self.serve.dialect == "anthropic":
                return responses.ChatChunksFrom(openai_client.StreamToOpenAI(self.client_model, True), to_responses)
            return to_responses
        if self.client_dialect is Dialect.ANTHROPIC:
            return anthropic_client.StreamToAnthropic(self.client_model)
        options = self.body.get("stream_options") or {}
        return openai_client.StreamToOpenAI(self.client_model, bool(options.get("include_usage")))

    def upstream_error_message(self, payload: bytes) -> str:
        """The message inside an upstream error body of either dialect, else its text."""
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return payload.decode("utf-8", "replace")[:500].strip() or "(empty body)"
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(data, dict) and data.get("detail"):
            return str(data["detail"])[:500]
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"][:500]
        return json.dumps(data)[:500]


def upstream_request_id(request_id: str) -> str:
    """The request id in a form every peer accepts: a UUID (llama.cpp's server refuses anything else).

    Anvil's own ids (``req_<32 hex digits>``) keep their digits; a caller's id maps to a stable UUID.
    """
    digits = request_id.removeprefix("req_")
    try:
        return str(uuid.UUID(hex=digits))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))
