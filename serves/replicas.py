"""Replicas on demand: a model's serves (those sharing its alias) kept between ``replicas`` and ``replica_max``.

Runs in the watch (beat, every few seconds), next to the ttl unloads (``serves/idle.py``). Per model:

* Fewer than ``replicas`` loaded or loading: load one of its on-demand serves (keep-warm).
* Its queue stays deep (a request has waited ``ANVIL_SCALE_AFTER`` seconds for a loaded replica) and fewer
  than ``replica_max`` are loaded or loading: load one more of its on-demand serves. One load at a time
  per model: the next watch looks again once it has ended, so a burst does not start every copy at once.

An extra replica only goes where it fits: a plan that would evict another model is skipped (scaling one
model out never swaps another out; a request that needs a swap asks for it itself). A serve whose last
load failed is not retried here (a request for it by name still is). The extras stop after ``ttl`` idle
(``ANVIL_REPLICA_TTL`` for a replica without one), never below ``replicas``: ``serves.idle``.

A model's bounds are the largest values across its serves, so one serve's setting is enough.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from serves.models import ModelState, Runtime, Serve
from serves.operations import LoadConflict, request_load
from serves.residency import oldest_wait, plan_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    floor: int  # replicas: kept loaded
    ceiling: int  # replica_max: loaded at most (at least the floor)

    @property
    def scales(self) -> bool:
        return self.ceiling > 1 or self.floor > 0


def bounds_of(members: Iterable[Serve]) -> Bounds:
    members = list(members)
    floor = max((s.replicas for s in members), default=0)
    return Bounds(floor, max(floor, *(s.replica_max for s in members)) if members else floor)


def models_of(serves: Iterable[Serve]) -> dict[str, list[Serve]]:
    """Serves Anvil runs, by the model id clients send (the replicas of each)."""
    groups: dict[str, list[Serve]] = defaultdict(list)
    for serve in serves:
        if serve.run_by != Runtime.REMOTE:
            groups[serve.public_model].append(serve)
    return groups


def scale_replicas(now: float | None = None) -> list[str]:
    """Ask for the loads the bounds call for; the serves asked for."""
    now = time.time() if now is None else now
    asked = []
    for model, members in models_of(Serve.objects.filter(enabled=True)).items():
        bounds = bounds_of(members)
        if not bounds.scales:
            continue
        why = _why_another(model, members, bounds, now)
        if why is None:
            continue
        spare = sorted((s for s in members if s.on_demand and s.model_state == ModelState.UNLOADED),
                       key=lambda s: s.name)
        for serve in spare:
            device, chosen = plan_for(serve, now)
            if chosen.no_room or chosen.evict:
                continue  # it would evict another model (or never fits): not for an extra copy
            try:
                request_load(serve.name, {}, why)
            except LoadConflict:
                continue
            log.info("model %s: loading replica %s (%s)", model, serve.name, why)
            asked.append(serve.name)
            break
    return asked


def _why_another(model: str, members: list[Serve], bounds: Bounds, now: float) -> str | None:
    """Why the model needs one more replica loaded now, or None."""
    live = [s for s in members if s.model_state in (ModelState.LOADED, ModelState.LOADING)]
    if len(live) >= bounds.ceiling:
        return None
    if len(live) < bounds.floor:
        return f"replicas: keeping {bounds.floor} of {model} loaded"
    loaded = [s for s in live if s.model_state == ModelState.LOADED]
    if not loaded or len(loaded) < len(live):
        return None  # none to be deep behind, or one already on its way
    waited = max(oldest_wait(s.name, now) for s in loaded)
    if waited < settings.ANVIL_SCALE_AFTER:
        return None
    return f"scale-out: a request for {model} waited {waited:.1f} s ({len(loaded)} of at most {bounds.ceiling} loaded)"
