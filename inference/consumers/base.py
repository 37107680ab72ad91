"""The base of every front-door consumer: request id, authentication, one error mapping."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from channels.generic.http import AsyncHttpConsumer

from inference.auth import KEY_CACHE, Principal, presented_key
from inference.errors import (
    Dialect,
    FrontDoorError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    error_body,
    error_event,
)

log = logging.getLogger(__name__)

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
    """Authenticates, then hands the body to ``respond``; errors come out in ``dialect``.

    ``__call__`` is Channels' consumer entry point, replaced to do what the
    generic one cannot: keep listening for the client's disconnect while the
    response is being made, cancelling the work (and so the upstream request) the
    moment it comes. An oversized or slow body never reaches it: the server's
    layer refuses it first (``anvil_site/body_bounds.py`` under uvicorn, Daphne's
    request class in ``anvil_site/webserver.py``). It also skips the channel layer and the per-message database hop: the
    hot path reaches the ORM only through database_sync_to_async.

    Nothing escapes it. An exception that escaped would reach Daphne's
    application checker, which answers with an HTML page, or, once the response
    has started, fails itself and stops reaping connections for good. So every
    error becomes an answer in the client's dialect; after the headers, the
    response is ended (an error event for a stream, a closed body otherwise).
    """

    channel_layer_alias = None
    dialect: Dialect = Dialect.OPENAI
    methods: frozenset[str] = frozenset({"POST"})
    authenticated = True
    scope_required = "inference"  # what the key must be allowed (inference/models.py Scope)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.request_id = request_id_from(scope["headers"])
        self.response_started = False
        self.streaming = False
        self.tags: dict[bytes, bytes] = {}  # response headers the serving code adds (served by, decision)
        self.started = time.perf_counter()
        self.timing: dict[str, float] = {}  # Server-Timing phases the serving code measured (ms)
        body = await self._read_body(receive)
        if body is None:
            return  # the client left before sending its whole request
        work = asyncio.ensure_future(self.handle(body))
        watch = asyncio.ensure_future(self._until_disconnect(receive))
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            watch.cancel()
        else:
            work.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)

    @staticmethod
    async def _read_body(receive: Any) -> bytes | None:
        """The whole body (already bounded in size and time); None when the client left first."""
        parts = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        self.response_started = True
        self.streaming = any(name == b"content-type" and value.startswith(b"text/event-stream")
                             for name, value in headers or ())
        await super().send_headers(status=status, headers=headers)

    async def handle(self, body: bytes) -> None:
        headers = self.scope["headers"]
        try:
            if self.scope["method"] not in self.methods:
                allowed = ", ".join(sorted(self.methods))
                raise MethodNotAllowed(f"{self.scope['method']} is not allowed here; use {allowed}.")
            principal = await KEY_CACHE.authenticate(presented_key(headers)) if self.authenticated else None
            if principal is not None and self.scope_required not in principal.scopes:
                raise PermissionDenied(f"This API key ({principal.name}) does not have the {self.scope_required} "
                                       f"scope; it has: {', '.join(sorted(principal.scopes))}.")
            await self.respond(body, principal)
        except FrontDoorError as error:
            await self._answer_error(error)
        except asyncio.CancelledError:
            raise  # the client left: nothing to answer
        except Exception:
            log.exception("unhandled error answering %s %s (request %s)", self.scope["method"],
                          self.scope["path"], self.request_id)
            await self._answer_error(InternalError(f"Anvil failed while answering this request; its log has the "
                                                   f"details under request id {self.request_id}."))

    async def _answer_error(self, error: FrontDoorError) -> None:
        """The error as an answer: whole if nothing was sent yet, else as the end of what began."""
        try:
            if not self.response_started:
                await self.send_error(error)
            elif self.streaming:
                await self.send_body(error_event(error, self.dialect), more_body=True)
                await self.send_body(b"")
            else:
                await self.send_body(b"")
        except Exception:  # the client is gone, or the server refused the message: nothing more to do
            log.debug("could not deliver an error for request %s", self.request_id, exc_info=True)

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        raise NotImplementedError

    def base_headers(self, content_type: bytes = JSON) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        headers.extend(self.tags.items())
        headers.append((b"server-timing", self._server_timing()))
        return headers

    def _server_timing(self) -> bytes:
        """The phases measured so far and the total up to these headers (a stream's own end comes later)."""
        phases = {**self.timing, "total": (time.perf_counter() - self.started) * 1000}
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in phases.items()).encode()

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
        await self.send_complete(error.status_in(self.dialect), error_body(error, self.dialect), headers)


class UnknownRouteConsumer(FrontDoorConsumer):
    """Any front-door path we do not serve: a 404 in the dialect the path belongs to."""

    methods = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
    authenticated = False

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        path = self.scope["path"]
        if path.startswith("/v1/messages"):
            self.dialect = Dialect.ANTHROPIC
        raise NotFound(f"Unknown route {self.scope['method']} {path}.", code="unknown_route")
