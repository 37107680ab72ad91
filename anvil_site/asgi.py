"""Who handles which path (served as ``anvil_site.asgi:application`` by uvicorn or Daphne).

* every request body is bounded first (``ANVIL_MAX_BODY_BYTES``, ``ANVIL_BODY_TIMEOUT``):
  no consumer or view sees an oversized or trickled one (``anvil_site/body_bounds.py``);
* the front door (``/v1/…``, ``/generate``, ``/loglikelihood``) and the probes
  (``/healthz``, ``/readyz``, ``/metrics``) go straight to their consumers,
  ahead of Django's URL resolver and middleware: the hot path pays for nothing
  it does not use;
* websockets go to Channels consumers behind session authentication;
* everything else (the console at ``/``, ``/admin/``, ``/api/``, static files)
  goes to Django.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()  # sets Django up before the imports below

from anvil_site import tracing  # noqa: E402

tracing.configure("anvil-web")  # on only when an OTLP endpoint is configured

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from anvil_site.body_bounds import BodyBounds  # noqa: E402
from anvil_site.checks import fail_fast  # noqa: E402
from anvil_site.dispatch import PathDispatcher  # noqa: E402
from anvil_site.health import healthz_app, readyz_app  # noqa: E402
from anvil_site.lifespan import lifespan_app  # noqa: E402
from anvil_site.metrics import MetricsMiddleware, metrics_app  # noqa: E402
from anvil_site.websockets import websocket_urlpatterns  # noqa: E402
from inference.consumers.admin import AdminConsumer  # noqa: E402
from inference.consumers.base import UnknownRouteConsumer  # noqa: E402
from inference.consumers.model_list import ModelsConsumer  # noqa: E402
from inference.consumers.native import CountTokensConsumer, PassThroughConsumer  # noqa: E402
from inference.consumers.relay import (  # noqa: E402
    ChatCompletionsConsumer,
    CompletionsConsumer,
    MessagesConsumer,
    ResponsesConsumer,
    RouteConsumer,
)

fail_fast("Anvil's web process")

# Everything imported so far lives as long as the process: move it out of the collector's
# way, so a full collection scans only what requests create (shorter pauses under load).
gc.collect()
gc.freeze()

front_door_unknown = UnknownRouteConsumer.as_asgi()
passthrough = PassThroughConsumer.as_asgi()

http_application = PathDispatcher(
    exact={
        "/v1/models": ModelsConsumer.as_asgi(),
        "/v1/chat/completions": ChatCompletionsConsumer.as_asgi(),
        "/v1/completions": CompletionsConsumer.as_asgi(),
        "/v1/messages": MessagesConsumer.as_asgi(),
        "/v1/responses": ResponsesConsumer.as_asgi(),
        "/v1/route": RouteConsumer.as_asgi(),
        "/healthz": healthz_app,
        "/readyz": readyz_app,
        "/metrics": metrics_app,
        "/v1/embeddings": passthrough,
        "/v1/messages/count_tokens": CountTokensConsumer.as_asgi(),
        "/generate": passthrough,
        "/loglikelihood": passthrough,
        "/tokenizer_info": passthrough,
        "/tokenize": passthrough,
        "/detokenize": passthrough,
    },
    prefixes=[("/v1/admin/", AdminConsumer.as_asgi()), ("/v1/models/", ModelsConsumer.as_asgi()),
              ("/v1/", front_door_unknown)],
    fallback=django_application,
    fallback_groups=("/admin/", "/api/", "/static/", "/console/"),
)

application = MetricsMiddleware(
    ProtocolTypeRouter(
        {
            "http": BodyBounds(http_application, settings.ANVIL_MAX_BODY_BYTES, settings.ANVIL_BODY_TIMEOUT),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
            "lifespan": lifespan_app,  # uvicorn's start and stop (Daphne sends none)
        }
    )
)
