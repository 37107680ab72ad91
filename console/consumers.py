"""The console's live views over websockets (staff only): the models board."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from console.board import board
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
        self._pusher = asyncio.create_task(self._push())

    async def disconnect(self, code: int) -> None:
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()

    async def _push(self) -> None:
        client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=None,
                                        socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            with contextlib.suppress(redis.RedisError):
                await pubsub.subscribe(changed_channel())
            while True:
                await self.send_json({"type": "board", **await database_sync_to_async(board)()})
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
