"""POST /generate and /loglikelihood: the in-worker engine's own contract, relayed to an ``hrm`` serve.

The body passes through unchanged except ``model``, which picks the serve (its name or its served
model) and defaults to the first enabled one. The worker's own answers, errors included
(``{"detail", "field"}`` with 400/422), reach the client as the worker wrote them; Anvil's errors
(no such serve, the worker unreachable) take the same shape.
"""

from __future__ import annotations

import json

from inference.admission import ADMISSION
from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import Dialect, InvalidRequest, NotFound, Unavailable, UpstreamFailed, UpstreamTimeout
from inference.relay import UpstreamRequest, UpstreamTimedOut, UpstreamUnreachable, open_upstream
from inference.wire.requests import parse_json_object
from serves.catalog import SERVE_CATALOG, ServeView
from serves.models import Engine

MAX_ANSWER_BYTES = 64 * 1024 * 1024


class NativeRelayConsumer(FrontDoorConsumer):
    dialect = Dialect.NATIVE

    async def respond(self, body: bytes, principal: Principal | None) -> None:
        request = parse_json_object(body)
        model = request.pop("model", None)
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("model must be a string.", param="model")
        serve = await self._serve(model)
        upstream = UpstreamRequest(serve.base_url.removesuffix("/v1") + self.scope["path"],
                                   json.dumps(request).encode(), {"content-type": "application/json"})
        with ADMISSION.admit(principal.key_id if principal else None):
            try:
                async with open_upstream(upstream) as response:
                    answer = await response.read_capped(MAX_ANSWER_BYTES)
                    status = response.status
            except UpstreamTimedOut as exc:
                raise UpstreamTimeout(f"{serve.name} did not answer in time: {exc}") from None
            except UpstreamUnreachable as exc:
                raise UpstreamFailed(f"{serve.name} is unreachable: {exc}") from None
        headers = self.base_headers() + [(b"x-anvil-served-by", serve.name.encode())]
        await self.send_complete(status, answer, headers)

    @staticmethod
    async def _serve(model: str | None) -> ServeView:
        workers = [s for s in await SERVE_CATALOG.get() if s.engine == Engine.HRM and s.base_url]
        if not workers:
            raise Unavailable("No enabled hrm serve answers /generate or /loglikelihood.")
        if model is None:
            return workers[0]
        for serve in workers:
            if model in (serve.name, serve.served_model):
                return serve
        names = ", ".join(s.name for s in workers)
        raise NotFound(f"No enabled hrm serve is named {model!r} (enabled: {names}).", param="model")

