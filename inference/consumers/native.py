"""Paths relayed as they are (``inference/passthrough.py``): the HRM worker's /generate and /loglikelihood,
the tokenizer routes, /v1/embeddings, and Anthropic's /v1/messages/count_tokens.

/generate and /loglikelihood keep the worker's own contract: the body passes through unchanged
except ``model``, which picks the serve (its name or its served model; none: any hrm serve), and
Anvil's own errors take the worker's shape (``{"detail", "field"}``).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import InvalidRequest
from inference.passthrough import count_tokens, serve_path
from inference.wire import Dialect
from inference.wire.requests import parse_json_object, validate_count_tokens

HRM_PATHS = frozenset({"/generate", "/loglikelihood"})


class PassThroughConsumer(FrontDoorConsumer):
    methods = frozenset({"GET", "POST"})

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        self.dialect = Dialect.NATIVE if scope["path"] in HRM_PATHS else Dialect.OPENAI
        await super().__call__(scope, receive, send)

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        path, method = self.scope["path"], self.scope["method"]
        if path == "/tokenizer_info":
            if method != "GET":
                raise InvalidRequest("GET /tokenizer_info takes no body; name the model as ?model=NAME.")
            query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
            await serve_path(self, path, "GET", None, (query.get("model") or [None])[0], principal, self.request_id)
            return
        if method != "POST":
            raise InvalidRequest(f"Use POST for {path}.")
        request = parse_json_object(body)
        model = request.pop("model", None) if path in HRM_PATHS else request.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("'model' must be a string.", param="model")
        await serve_path(self, path, "POST", request, model, principal, self.request_id)


class CountTokensConsumer(FrontDoorConsumer):
    dialect = Dialect.ANTHROPIC

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        request = parse_json_object(body)
        validate_count_tokens(request)
        await count_tokens(self, request, principal, self.request_id, dict(self.scope["headers"]))
