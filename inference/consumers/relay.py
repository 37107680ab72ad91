"""The relaying endpoints: /v1/chat/completions, /v1/completions, /v1/messages, and /v1/route (explain).

Each parses and validates its body, then hands it to ``inference.serving``, which decides,
tries the candidates and writes the answer back through the consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.serving import RelayRequest, make_decision, serve_request
from inference.wire import Dialect
from inference.wire.requests import (
    parse_json_object,
    validate_chat,
    validate_completion,
    validate_messages,
    validate_responses,
    validate_route,
)
from serves.residency import swap_plan


class RelayConsumer(FrontDoorConsumer):
    endpoint = "chat"
    upstream_dialects = frozenset({"openai", "anthropic"})
    validate: Callable[[dict[str, Any]], None] = staticmethod(validate_chat)

    async def respond(self, raw: bytes, principal: Principal | None) -> None:
        body = parse_json_object(raw)
        self.validate(body)
        await serve_request(self, RelayRequest(self.dialect, self.endpoint, body, principal, self.request_id,
                                               dict(self.scope["headers"]), self.upstream_dialects))


class ChatCompletionsConsumer(RelayConsumer):
    endpoint = "chat"
    validate = staticmethod(validate_chat)


class CompletionsConsumer(RelayConsumer):
    endpoint = "completions"
    upstream_dialects = frozenset({"openai"})
    validate = staticmethod(validate_completion)


class MessagesConsumer(RelayConsumer):
    endpoint = "messages"
    dialect = Dialect.ANTHROPIC
    validate = staticmethod(validate_messages)


class ResponsesConsumer(RelayConsumer):
    """POST /v1/responses: OpenAI's Responses API (and llm-pool's shape of it), stateless."""

    endpoint = "responses"
    validate = staticmethod(validate_responses)


class RouteConsumer(FrontDoorConsumer):
    """POST /v1/route: the decision for a request (either dialect's body), calling no serve."""

    async def respond(self, raw: bytes, principal: Principal | None) -> None:
        body = parse_json_object(raw)
        validate_route(body)
        decision = await make_decision(body, frozenset({"openai", "anthropic"}), principal)
        payload = decision.explain()
        payload.update(unknown_model=decision.unknown_model, too_large=decision.too_large)
        first = decision.candidates[0].serve if decision.candidates else None
        if first is not None and not first.loaded:  # the pool's plan for the first choice: what loading it costs
            payload["pool_plan"] = await database_sync_to_async(swap_plan)(first.name)
        await self.send_json(200, payload)
