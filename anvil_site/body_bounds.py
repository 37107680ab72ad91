"""Request-body bounds in the ASGI application, so that any server carries the front door.

``BodyBounds`` wraps the http application (``anvil_site/asgi.py``) and enforces, before any
consumer or Django view runs:

* a ``Content-Length`` over ``ANVIL_MAX_BODY_BYTES``: 413 at once, without reading the body;
* a chunked body that grows past it: 413 the moment it does;
* a body not wholly received within ``ANVIL_BODY_TIMEOUT`` seconds of the application's call
  (the headers' arrival, under uvicorn): 408.

Each answer is JSON in the dialect of the path (``refusal_body``) with ``connection: close``, so
the server drops the connection instead of reading the rest of the body.

The body is read whole before the application is called, then handed to it as it came. Every
application here reads the whole body before answering anyway (Channels' ``AsyncHttpConsumer``,
Django's handler), so nothing is lost; and because the application has not run when a refusal is
sent, a refusal never follows a response already started, and no consumer is left waiting on a
body that will not come. A request without a body (no ``Content-Length``, no chunked transfer)
passes through untouched, and a small one costs a header scan and one deadline.

Under Daphne the body has already arrived whole (Twisted spools it before the application sees a
byte), so the bounds there live in Daphne's request class (``anvil_site/webserver.py``), which
shares ``refusal_body`` with this module; this one then only ever sees bodies within the cap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def refusal_body(path: bytes, status: int, message: str) -> bytes:
    """A 408 or 413 as JSON in the dialect of ``path``: Anthropic's under /v1/messages, OpenAI's elsewhere."""
    if path.startswith(b"/v1/messages"):
        kind = "request_too_large" if status == 413 else "invalid_request_error"
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    code = "request_too_large" if status == 413 else "request_timeout"
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's length from its headers: 0 when there is none, None when it is chunked (unknown)."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None  # it wins over a Content-Length (RFC 9112 §6.3)
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:  # the server lets such a request through only if it framed the body otherwise
                return None
    return length


class BodyTooLarge(Exception):
    """The body grew past the cap while it arrived."""


class BodyBounds:
    def __init__(self, app: Asgi, max_body: int, timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = declared_length(scope["headers"])
        if declared == 0:
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > self.max_body:
            await refuse(scope, send, 413, f"The request body is {declared} bytes; the limit is {self.max_body} "
                                           "(ANVIL_MAX_BODY_BYTES).")
            return
        try:
            async with asyncio.timeout(self.timeout):
                messages = await self.whole_body(receive)
        except BodyTooLarge:
            await refuse(scope, send, 413, f"The request body exceeds {self.max_body} bytes (ANVIL_MAX_BODY_BYTES).")
            return
        except TimeoutError:
            await refuse(scope, send, 408, f"The request body did not arrive within {self.timeout:g} s "
                                           "(ANVIL_BODY_TIMEOUT).")
            return
        if messages is None:
            return  # the client left before its body was whole: there is no one to answer
        await self.app(scope, replaying(messages, receive), send)

    async def whole_body(self, receive: Receive) -> list[Message] | None:
        """The body's ``http.request`` messages up to the last one; None if the client left first."""
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge
            messages.append(message)
            if not message.get("more_body", False):
                return messages


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` for the application: the body as it came, then the server's own (``http.disconnect``)."""
    pending = iter(messages)

    async def replayed() -> Message:
        message = next(pending, None)
        return message if message is not None else await receive()

    return replayed


async def refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    body = refusal_body(scope.get("raw_path") or scope["path"].encode(), status, message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
