"""GET /v1/models: the serves a client may name as ``model``."""

from __future__ import annotations

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from serves.catalog import SERVE_CATALOG


class ModelsConsumer(FrontDoorConsumer):
    methods = frozenset({"GET"})

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        serves = await SERVE_CATALOG.get()
        data = [
            {
                "id": serve.name,
                "object": "model",
                "created": serve.created,
                "owned_by": "anvil",
                # Extra fields are ignored by the SDKs and tell a human what answers.
                "anvil": {"tier": serve.tier, "engine": serve.engine, "served_model": serve.served_model},
            }
            for serve in serves
        ]
        await self.send_json(200, {"object": "list", "data": data})
