"""The playground's way through the front door: an operator's request, served by ``inference.serving`` (or
``inference.passthrough`` for ``/generate`` and ``/loglikelihood``) exactly as a client's is, with the answer
forwarded to the operator's websocket as it comes.

The operator's requests carry the console's own key (``anvil-console``, the inference scope, made on first
use; its secret is never kept), so they are routed, limited and logged like any other, under that name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from inference.auth import Principal, principal_of
from inference.keys import create_key
from inference.models import ApiKey
from inference.wire.sse import SSEDecoder

CONSOLE_KEY = "anvil-console"
Send = Callable[[dict[str, Any]], Awaitable[None]]


def console_principal() -> Principal:
    """The console's key, made the first time the playground is used (synchronous: the ORM)."""
    row = ApiKey.objects.filter(name=CONSOLE_KEY).first()
    if row is None:
        row = create_key(CONSOLE_KEY).key
    if row.revoked_at is not None:
        raise PermissionError(f"The console's key {CONSOLE_KEY!r} is revoked: restore it on the keys page to use "
                              "the playground.")
    return principal_of(row)


class SocketSink:
    """A response sink (``inference.attempt.ResponseSink``) that forwards the answer to a websocket as messages:
    ``start`` (status, served by, decision), ``event`` (each SSE event's data, parsed), ``answer`` (a whole
    JSON answer) and ``end``."""

    def __init__(self, send: Send, lane: str) -> None:
        self.send, self.lane = send, lane
        self.response_started = False
        self.timing: dict[str, float] = {}
        self.tags: dict[bytes, bytes] = {}
        self.streaming = False
        self.whole = b""
        self.parser = SSEDecoder()

    def base_headers(self, content_type: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), *self.tags.items()]

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        self.response_started = True
        found = dict(headers or [])
        self.streaming = found.get(b"content-type", b"").startswith(b"text/event-stream")
        await self.send({"type": "start", "lane": self.lane, "status": status, **self._tags()})

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        if self.streaming:
            for event in self.parser.feed(body):
                if event.data and event.data != "[DONE]":
                    await self.send({"type": "event", "lane": self.lane, "data": _json(event.data)})
        else:
            self.whole += body
            if not more_body:
                await self.send({"type": "answer", "lane": self.lane, "data": _json(self.whole.decode())})
        if not more_body:
            await self.send({"type": "end", "lane": self.lane})

    async def send_complete(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.response_started = True
        await self.send({"type": "start", "lane": self.lane, "status": status, **self._tags()})
        await self.send({"type": "answer", "lane": self.lane, "data": _json(body.decode())})
        await self.send({"type": "end", "lane": self.lane})

    def tags_seen(self) -> dict[str, str]:
        return self._tags()

    def _tags(self) -> dict[str, str]:
        return {"served_by": self.tags.get(b"x-anvil-served-by", b"").decode(),
                "decision": self.tags.get(b"x-anvil-decision", b"").decode()}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
