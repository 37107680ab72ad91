"""The admin API under /v1/admin/, in llm-pool's shape (keys with the ``admin`` scope only).

    GET  /v1/admin/models                  every serve: state, runtime, capabilities, in flight, constraints
    POST /v1/admin/models/{name}/load      {"overrides": {...}} live only; 202 queued, 200 already loaded
    POST /v1/admin/models/{name}/unload    drains, then stops; 202 queued, 200 already unloaded
    GET  /v1/admin/gpu-memory              per GPU (nvidia-smi) and per serve (estimated VRAM)

Errors in OpenAI's shape: 404 ``model_not_found``, 422 ``invalid_load_request``, 409 ``load_conflict``.
"""

from __future__ import annotations

import re

from channels.db import database_sync_to_async

from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import Conflict, MethodNotAllowed, NotFound, Unavailable, Unprocessable
from inference.wire.requests import parse_json_object
from serves import operations

_ACTION = re.compile(r"^/v1/admin/models/(?P<name>[^/]+)/(?P<action>load|unload)/?$")


class AdminConsumer(FrontDoorConsumer):
    methods = frozenset({"GET", "POST"})
    scope_required = "admin"

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        path, method = self.scope["path"].rstrip("/"), self.scope["method"]
        who = f"api:{principal.name}" if principal else "api"
        if path == "/v1/admin/models":
            self._only(method, "GET")
            await self.send_json(200, {"object": "list", "data": await database_sync_to_async(
                operations.models_report)()})
            return
        if path == "/v1/admin/gpu-memory":
            self._only(method, "GET")
            await self.send_json(200, await database_sync_to_async(operations.gpu_memory_report)())
            return
        found = _ACTION.match(self.scope["path"])
        if found is None:
            raise NotFound(f"Unknown admin route {method} {self.scope['path']}.", code="unknown_route")
        self._only(method, "POST")
        name, action = found["name"], found["action"]
        try:
            if action == "load":
                request = parse_json_object(body) if body.strip() else {}
                requested = await database_sync_to_async(operations.request_load)(
                    name, request.get("overrides"), who)
            else:
                requested = await database_sync_to_async(operations.request_unload)(name, who)
        except operations.ModelNotFound as exc:
            raise NotFound(str(exc), param="model", code="model_not_found") from None
        except operations.InvalidLoadRequest as exc:
            raise Unprocessable(exc.message, param=f"overrides.{exc.field}", code="invalid_load_request") from None
        except operations.LoadConflict as exc:
            raise Conflict(str(exc), code="load_conflict") from None
        except operations.QueueUnavailable as exc:
            raise Unavailable(f"The {action} of {name!r} could not be queued, and nothing changed: {exc}",
                              code="queue_unavailable", headers=[(b"retry-after", b"5")]) from None
        await self.send_json(202 if requested.accepted else 200, requested.serve)

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}.")



