"""GET /v1/models: the serves a client may name as ``model``."""

from __future__ import annotations

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer


class ModelsConsumer(FrontDoorConsumer):
    methods = frozenset({"GET"})

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        # The serves table arrives with the serves issue; until then nothing is enabled.
        await self.send_json(200, {"object": "list", "data": []})
