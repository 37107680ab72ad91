"""GET /v1/models and GET /v1/models/{id}: the serves a client may name as ``model``.

OpenAI's shapes (a list of ``model`` objects; one of them; a 404 with code ``model_not_found``),
each model with an ``anvil`` object the SDKs ignore and a human or a harness reads: where the
serve sits, its model state, and what it can take. The list holds the loaded models, as llm-pool's
does (what a client can use now); ``?all=true`` lists every enabled serve with its state.
"""

from __future__ import annotations

from typing import Any

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import NotFound
from inference.key_reach import reach_of, within
from inference.serving import raise_if_out_of_reach
from serves.catalog import ServeView, current_serves

MODELS_PATH = "/v1/models"


def model_object(serve: ServeView) -> dict[str, Any]:
    return {
        "id": serve.name,
        "object": "model",
        "created": serve.created,
        "owned_by": "anvil",
        "anvil": {
            "tier": serve.tier,
            "engine": serve.engine,
            "served_model": serve.served_model,
            "state": serve.model_state,
            "runtime": serve.runtime,
            "load_error": serve.load_error or None,
            "health": serve.health,
            "capabilities": {
                "modalities": list(serve.modalities),
                "tools": serve.supports_tools,
                "thinking": serve.thinking or None,  # how reasoning is switched on; null: the serve cannot reason
                "embeddings": serve.embeddings,
                "responses_api": serve.responses_api,
                "context_limit": serve.context_limit,
            },
        },
    }


def find(serves: tuple[ServeView, ...], model_id: str) -> ServeView | None:
    """The serve a ``model`` of that name routes to: its name first, else its served model's name."""
    return (next((serve for serve in serves if serve.name == model_id), None)
            or next((serve for serve in serves if serve.served_model == model_id), None))


class ModelsConsumer(FrontDoorConsumer):
    methods = frozenset({"GET"})

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        model_id = self.scope["path"][len(MODELS_PATH):].strip("/")
        reach = reach_of(principal, {})
        every = await current_serves()
        serves, refused = within(every, reach)  # a key lists only what it may use
        if not model_id:
            every = b"all=true" in self.scope.get("query_string", b"").lower()
            listed = [model_object(serve) for serve in serves if every or serve.loaded]
            await self.send_json(200, {"object": "list", "data": listed})
            return
        serve = find(serves, model_id)
        if serve is None:  # perhaps a serve added a moment ago: look again before a 404
            every = await current_serves(force=True)
            serves, refused = within(every, reach)
            serve = find(serves, model_id)
        if serve is None and refused:
            raise_if_out_of_reach(model_id, every, refused)
        if serve is None:
            raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
        await self.send_json(200, model_object(serve))
