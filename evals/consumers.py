"""/ws/evals/: live progress of eval runs for the console's pages (staff only)."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from evals.progress_feed import MAX_WATCHED, PROGRESS_GROUP, snapshot


class EvalProgressConsumer(AsyncJsonWebsocketConsumer):
    """Relays ``evals.progress_feed`` progress messages; a page first sends ``{"type": "watch", "runs": [ids]}``
    and gets those runs' stored progress back, so an update published before it connected is not lost."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        # Joined only after the check: an anonymous socket never receives a message.
        await self.channel_layer.group_add(PROGRESS_GROUP, self.channel_name)
        self._joined = True
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "_joined", False):
            await self.channel_layer.group_discard(PROGRESS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "watch":
            return
        runs = content.get("runs")
        if not isinstance(runs, list):
            return
        ids = [pk for pk in runs[:MAX_WATCHED] if isinstance(pk, int) and not isinstance(pk, bool)]
        for message in await database_sync_to_async(snapshot)(ids):
            await self.send_json(message)

    async def eval_progress(self, event: dict[str, Any]) -> None:
        await self.send_json(event["progress"])
