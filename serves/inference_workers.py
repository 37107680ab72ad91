"""Serves that are Anvil's in-worker engine (``runinference``): a checkpoint loaded as a ``process`` serve.

``make run`` registers the demo checkpoint with ``register_checkpoint`` and loads it like any other
process serve (serves/loading.py), so it is ``loaded``, unloadable and adopted again after a restart.
``register_worker`` records a worker someone else runs, as an upstream Anvil only relays to.
Registration sets what the caller knows (where it listens, the model it serves) and leaves what an
operator may have changed in the admin (tier, enabled, tools).
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


@transaction.atomic
def register_checkpoint(name: str, port: int, checkpoint: str, *, tier: str, context_limit: int | None) -> Serve:
    """``checkpoint`` as a process serve of the runinference preset, listening on ``port``."""
    wanted: dict[str, object] = {
        "engine": Engine.HRM, "dialect": Dialect.OPENAI, "runtime": "process", "preset": "runinference",
        "preset_args": {"checkpoint": checkpoint}, "port": port, "base_url": "", "container": "",
        "served_model": name, "health_path": "/readyz", "context_limit": context_limit,
        "ready_timeout": 300,
    }
    serve, created = Serve.objects.select_for_update().get_or_create(
        name=name, defaults={**wanted, "tier": tier, "supports_tools": False})
    if created:
        return serve
    changed = [field for field, value in wanted.items() if getattr(serve, field) != value]
    for field in changed:
        setattr(serve, field, wanted[field])
    if changed:  # an unchanged row keeps its updated_at, so no snapshot refreshes for nothing
        serve.save(update_fields=[*changed, "updated_at"])
    return serve
