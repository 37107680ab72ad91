"""The base of every front-door consumer: request id, authentication, one error mapping."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from channels.generic.http import AsyncHttpConsumer

from inference.auth import KEY_CACHE, Principal, presented_key
from inference.errors import Dialect, FrontDoorError, MethodNotAllowed, NotFound, error_body

JSON = b"application/json"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return f"req_{uuid.uuid4().hex}"


class FrontDoorConsumer(AsyncHttpConsumer):
    """Authenticates, then hands the body to ``respond``; errors come out in ``dialect``."""

    # The hot path never touches the channel layer: no Redis round trip per request.
    channel_layer_alias = None
    dialect: Dialect = Dialect.OPENAI
    methods: frozenset[str] = frozenset({"POST"})
    authenticated = True

    async def dispatch(self, message: dict[str, Any]) -> None:
        # AsyncConsumer.dispatch closes stale DB connections through a thread hop
        # on every message; these consumers reach the ORM only through
        # database_sync_to_async, which does that itself, so skip the hop.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def handle(self, body: bytes) -> None:
        headers = self.scope["headers"]
        self.request_id = request_id_from(headers)
        try:
            if self.scope["method"] not in self.methods:
                allowed = ", ".join(sorted(self.methods))
                raise MethodNotAllowed(f"{self.scope['method']} is not allowed here; use {allowed}.")
            principal = await KEY_CACHE.authenticate(presented_key(headers)) if self.authenticated else None
            await self.respond(body, principal)
        except FrontDoorError as error:
            await self.send_error(error)

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        raise NotImplementedError

    def base_headers(self, content_type: bytes = JSON) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]

    async def send_complete(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """One whole response, with Content-Length (no chunked framing for a known size)."""
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send_response(status, body, headers=headers)

    async def send_json(self, status: int, payload: object, extra: list[tuple[bytes, bytes]] = ()) -> None:
        await self.send_complete(status, json.dumps(payload).encode(), self.base_headers() + list(extra))

    async def send_error(self, error: FrontDoorError) -> None:
        headers = self.base_headers() + error.headers
        if error.status_code == 401:
            headers.append((b"www-authenticate", b'Bearer realm="anvil"'))
        await self.send_complete(error.status_code, error_body(error, self.dialect), headers)


class UnknownRouteConsumer(FrontDoorConsumer):
    """Any front-door path we do not serve: a 404 in the dialect the path belongs to."""

    methods = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
    authenticated = False

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        path = self.scope["path"]
        if path.startswith("/v1/messages"):
            self.dialect = Dialect.ANTHROPIC
        raise NotFound(f"Unknown route {self.scope['method']} {path}.", code="unknown_route")
