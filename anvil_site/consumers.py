"""Websocket consumers of the site itself."""

from __future__ import annotations

import asyncio

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from anvil_site.health import readiness

STATUS_PERIOD_SECONDS = 3.0


class StackStatusConsumer(AsyncJsonWebsocketConsumer):
    """Pushes the readiness of the stack to the console every few seconds (staff only)."""

    channel_layer_alias = None  # pushes its own data; no group messages

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
        while True:
            ready, checks = await readiness()
            await self.send_json({"type": "status", "ready": ready, "checks": checks})
            await asyncio.sleep(STATUS_PERIOD_SECONDS)
