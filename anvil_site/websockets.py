"""Websocket routes (operator pages' live updates), behind session authentication.

The console's live views register here as they land (eval progress, serve state).
"""

from __future__ import annotations

from django.urls import path

from anvil_site.consumers import StackStatusConsumer
from console.consumers import ModelsBoardConsumer, PlaygroundConsumer
from evals.consumers import EvalProgressConsumer

websocket_urlpatterns = [
    path("ws/status/", StackStatusConsumer.as_asgi()),
    path("ws/evals/", EvalProgressConsumer.as_asgi()),
    path("ws/models/", ModelsBoardConsumer.as_asgi()),
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
]
