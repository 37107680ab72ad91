"""Serves that are in-worker engines started beside the stack (``runinference``), not containers.

The launcher registers the worker it starts, so ``/v1/models`` lists it and the front door
relays to it like to any vLLM. Registration sets what the launcher knows (where it listens, the
model it serves) and leaves what an operator may have changed in the admin (tier, enabled, tools).
"""

from __future__ import annotations

from django.db import transaction

from serves.models import Dialect, Engine, Serve


@transaction.atomic
def register_worker(name: str, port: int, served_model: str, *, tier: str, context_limit: int | None) -> Serve:
    serve, created = Serve.objects.select_for_update().get_or_create(name=name, defaults={
        "tier": tier, "engine": Engine.HRM, "dialect": Dialect.OPENAI, "supports_tools": False,
        "health_path": "/readyz", "base_url": f"http://127.0.0.1:{port}/v1", "served_model": served_model,
        "context_limit": context_limit,
    })
    if created:
        return serve
    wanted = {"engine": Engine.HRM, "base_url": f"http://127.0.0.1:{port}/v1", "served_model": served_model,
              "context_limit": context_limit, "container": ""}
    changed = [field for field, value in wanted.items() if getattr(serve, field) != value]
    for field in changed:
        setattr(serve, field, wanted[field])
    if changed:  # an unchanged row keeps its updated_at, so no snapshot refreshes for nothing
        serve.save(update_fields=[*changed, "updated_at"])
    return serve
