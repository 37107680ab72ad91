"""One request's way to its serve and back: the upstream URL, headers and body, and the translators.

Same dialect: the client's JSON goes upstream with every field kept (tools,
tool_choice, unknown fields); only ``model`` becomes the serve's served model
name, and the serve's ``extra_body`` is merged in. Cross dialect: translated by
``inference.wire``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from inference.errors import Dialect
from inference.relay import UpstreamRequest
from inference.wire import anthropic_client, openai_client
from serves.catalog import ServeView
from serves.upstream_keys import upstream_auth_headers

UPSTREAM_PATHS = {("openai", "chat"): "/chat/completions", ("openai", "completions"): "/completions",
                  ("anthropic", "chat"): "/messages", ("openai", "messages"): "/chat/completions",
                  ("anthropic", "messages"): "/messages"}


@dataclass
class Exchange:
    client_dialect: Dialect
    endpoint: str  # "chat" | "completions" | "messages"
    body: dict[str, Any]
    serve: ServeView
    request_id: str
    client_headers: dict[bytes, bytes]

    @property
    def upstream_dialect(self) -> str:
        return self.serve.dialect

    @property
    def same_dialect(self) -> bool:
        return self.upstream_dialect == self.client_dialect.value

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def client_model(self) -> str:
        return str(self.body.get("model") or self.serve.name)

    def upstream_request(self) -> UpstreamRequest:
        url = self.serve.base_url + UPSTREAM_PATHS[(self.upstream_dialect, self.endpoint)]
        return UpstreamRequest(url, json.dumps(self._upstream_body(), ensure_ascii=False).encode(), self._headers(),
                               stream=self.stream)

    def _upstream_body(self) -> dict[str, Any]:
        if self.same_dialect:
            body = dict(self.body)
            body["model"] = self.serve.served_model
        elif self.client_dialect is Dialect.ANTHROPIC:
            body = anthropic_client.request_to_openai(self.body, self.serve.served_model)
        else:
            body = openai_client.request_to_anthropic(self.body, self.serve.served_model,
                                                      settings.ANVIL_DEFAULT_MAX_TOKENS)
        for key, value in self.serve.extra_body.items():
            body.setdefault(key, value)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-request-id": upstream_request_id(self.request_id),
                   "accept": "text/event-stream" if self.stream else "application/json"}
        headers.update(upstream_auth_headers(self.upstream_dialect, self.serve.api_key_env))
        if self.upstream_dialect == "anthropic" and self.same_dialect:
            # An Anthropic client's own protocol version and betas reach an Anthropic upstream.
            for name in ("anthropic-version", "anthropic-beta"):
                value = self.client_headers.get(name.encode())
                if value:
                    headers[name] = value.decode("latin-1")
        return headers

    def translate_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        if self.client_dialect is Dialect.ANTHROPIC:
            return anthropic_client.response_to_anthropic(answer, self.client_model)
        return openai_client.response_to_openai(answer, self.client_model)

    def stream_translator(self) -> anthropic_client.StreamToAnthropic | openai_client.StreamToOpenAI:
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
