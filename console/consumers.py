"""The console's live views over websockets (staff only, same origin): the models board, and the playground."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis.asyncio
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from console.board import board, detail
from console.playground import SocketSink, console_principal
from inference.errors import FrontDoorError, InvalidRequest
from inference.passthrough import serve_path
from inference.serving import RelayRequest, serve_request
from inference.wire import Dialect
from inference.wire.requests import validate_chat
from serves.model_states import changed_channel

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # in flight, queues and traffic; a state change is pushed the moment it is published


class ModelsBoardConsumer(AsyncJsonWebsocketConsumer):
    """Pushes the models board: at once when a serve's state changes, and every REFRESH_SECONDS for the counts."""

    channel_layer_alias = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        await self.accept()
        self._detail: str | None = None
        self._pusher = asyncio.create_task(self._push())

    async def disconnect(self, code: int) -> None:
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """``{"detail": name}`` while a row is open (its log tail and timeline come with every push), null to stop."""
        if isinstance(content, dict) and "detail" in content:
            name = content["detail"]
            self._detail = name if isinstance(name, str) else None
            if self._detail:
                await self._send_detail()

    async def _send_detail(self) -> None:
        found = await database_sync_to_async(detail)(self._detail) if self._detail else None
        if found is not None:
            await self.send_json({"type": "detail", **found})

    async def _push(self) -> None:
        client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=None,
                                        socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            with contextlib.suppress(redis.RedisError):
                await pubsub.subscribe(changed_channel())
            while True:
                await self.send_json({"type": "board", **await database_sync_to_async(board)()})
                await self._send_detail()
                await self._changed_or_timeout(pubsub)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()

    @staticmethod
    async def _changed_or_timeout(pubsub: redis.asyncio.client.PubSub) -> None:
        """Return when a state changed, or after REFRESH_SECONDS (Redis away: just the timer)."""
        if not pubsub.subscribed:
            await asyncio.sleep(REFRESH_SECONDS)
            return
        try:
            await pubsub.get_message(timeout=REFRESH_SECONDS)
        except redis.RedisError:
            log.debug("the models board lost its Redis subscription", exc_info=True)
            await asyncio.sleep(REFRESH_SECONDS)


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    """The playground's requests: each message ``{lane, path, body}`` is served through the front door's own code
    (routing, limits, the decision log) with the console's key, its answer streamed back on ``lane``."""

    channel_layer_alias = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        await self.accept()
        self._running: set[asyncio.Task[None]] = set()

    async def disconnect(self, code: int) -> None:
        for task in getattr(self, "_running", set()):
            task.cancel()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        task = asyncio.create_task(self._serve(str(content.get("lane", "a"))[:16], content.get("path"),
                                               content.get("body")))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _serve(self, lane: str, path: object, body: object) -> None:
        sink = SocketSink(self.send_json, lane)
        try:
            if not isinstance(body, dict):
                raise InvalidRequest("The body is a JSON object.")
            principal = await database_sync_to_async(console_principal)()
            request_id = f"req_{uuid.uuid4().hex}"
            if path == "chat":
                validate_chat(body)
                await serve_request(sink, RelayRequest(Dialect.OPENAI, "chat", body, principal, request_id, {}))
            elif path in ("generate", "loglikelihood"):
                model = body.pop("model", None)
                await serve_path(sink, f"/{path}", "POST", body, model if isinstance(model, str) else None,
                                 principal, request_id)
            else:
                raise InvalidRequest("path is chat, generate or loglikelihood.")
        except FrontDoorError as error:
            await self.send_json({"type": "error", "lane": lane, "status": error.status_in(Dialect.OPENAI),
                                  "code": error.code, "message": error.message, **sink.tags_seen()})
        except PermissionError as error:
            await self.send_json({"type": "error", "lane": lane, "status": 403, "code": "console_key_revoked",
                                  "message": str(error)})
