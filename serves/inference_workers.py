"""Serves that are Anvil's in-worker engine (``runinference``): a checkpoint loaded as a ``process`` serve.

``make run`` registers the demo checkpoint with ``register_checkpoint`` and loads it like any other
process serve (serves/loading.py), so it is ``loaded``, unloadable and adopted again after a restart.
``register_worker`` records a worker someone else runs, as an upstream Anvil only relays to.
Registration sets what the caller knows (where it listens, the model it serves) and leaves what an
operator may have changed in the admin (tier, enabled, tools).
"""

from __future__ import annotations

from django.db import transaction

from serves.models import Dialect, Engine, Gpu, Serve

# The demo's device: room for one of its two checkpoints at a time, so a request for the other swaps them
# (docs/pool.md). Footprints and capacity are declared: the demo runs on any machine, GPU or not.
DEMO_DEVICE = {"name": "demo", "memory_gb": 1.0, "min_residency": 10, "max_wait": 60}
DEMO_FOOTPRINT_GB = 0.6


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
def register_demo_pair(names: tuple[str, str], ports: tuple[int, int], checkpoint: str, *, tier: str,
                       context_limit: int | None) -> list[Serve]:
    """The ``make run`` demo: ``checkpoint`` twice (on ``ports``), both loaded on demand on a declared device
    with room for one. What an operator changed since (the device, a serve's pool fields) stays."""
    Gpu.objects.get_or_create(name=DEMO_DEVICE["name"], defaults={k: v for k, v in DEMO_DEVICE.items() if k != "name"})
    pool = {"on_demand": True, "gpu": DEMO_DEVICE["name"], "vram_gb": DEMO_FOOTPRINT_GB,
            # What the console's Load form offers for the demo: the worker's batch and answer length.
            "load_constraints": {"max_batch": {"min": 1, "max": 64}, "max_tokens": {"min": 16, "max": 2048}}}
    return [register_checkpoint(name, port, checkpoint, tier=tier, context_limit=context_limit, first_time=pool)
            for name, port in zip(names, ports, strict=True)]


@transaction.atomic
def register_checkpoint(name: str, port: int, checkpoint: str, *, tier: str, context_limit: int | None,
                        first_time: dict[str, object] | None = None) -> Serve:
    """``checkpoint`` as a process serve of the runinference preset, listening on ``port`` (``first_time``: fields
    set only when the serve is created)."""
    wanted: dict[str, object] = {
        "engine": Engine.HRM, "dialect": Dialect.OPENAI, "runtime": "process", "preset": "runinference",
        "preset_args": {"checkpoint": checkpoint}, "port": port, "base_url": "", "container": "",
        "served_model": name, "health_path": "/readyz", "context_limit": context_limit,
        "ready_timeout": 300,
    }
    serve, created = Serve.objects.select_for_update().get_or_create(
        name=name, defaults={**wanted, "tier": tier, "supports_tools": False, **(first_time or {})})
    if created:
        return serve
    changed = [field for field, value in wanted.items() if getattr(serve, field) != value]
    for field in changed:
        setattr(serve, field, wanted[field])
    if changed:  # an unchanged row keeps its updated_at, so no snapshot refreshes for nothing
        serve.save(update_fields=[*changed, "updated_at"])
    return serve
