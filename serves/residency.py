"""Residency: what is loaded on each GPU, what a load needs, and which models make room for it.

A serve's ``gpu`` names a device declared as ``[[gpu]]`` (``Gpu`` rows: capacity, ``exclusive``, the swap
policy) or, failing that, one nvidia-smi reports. Its footprint is the GPU memory measured at its last
load, else its declared ``vram_gb``; a serve with neither is taken to need the whole device (an unknown
footprint is never assumed small). A serve on no known device is not managed: it loads as before.

Before a load starts (``make_room``, in the load task) the plan says which residents of its GPU must go:
none if it fits; else idle residents first, least recently used first, then busy ones (an unload drains
them first). A resident loaded less than ``min_residency`` ago that requests still want (waiting or in
flight) is protected, so alternating requests batch per model instead of thrashing swaps (llama-swap
#612); the protection ends when the load's oldest waiting request has waited ``max_wait`` (no request
starves). A load blocked by protection waits, re-planning every half second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from django.conf import settings

from serves.drain_counts import in_flight
from serves.models import Gpu, ModelState, Runtime, Serve
from serves.probes import gpus
from serves.queue_keys import occupancy, queue_keys
from serves.runtimes import runtime_for

log = logging.getLogger(__name__)

REPLAN_SECONDS = 0.5
HOLDING_STATES = (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADING)


@dataclass(frozen=True)
class Device:
    name: str
    capacity_gb: float
    exclusive: bool = False
    min_residency: float = 30.0
    max_wait: float = 120.0


@dataclass(frozen=True)
class Resident:
    name: str
    pk: int
    state: str
    footprint_gb: float | None
    loaded_at: float  # epoch seconds of its last state change
    last_used: float  # its last request, else loaded_at
    busy: bool  # requests wait for it or are in flight

    def protected(self, now: float, device: Device) -> bool:
        return self.state != ModelState.LOADED or (self.busy and now - self.loaded_at < device.min_residency)


@dataclass(frozen=True)
class Plan:
    evict: tuple[Resident, ...] = ()
    blocked_by: tuple[str, ...] = ()  # protected residents that must go first (wait and plan again)
    no_room: str = ""  # why it can never fit

    def describe(self) -> str:
        if self.no_room:
            return self.no_room
        if not self.evict:
            return "fits"
        names = ", ".join(r.name + (" after it drains" if r.busy else "") for r in self.evict)
        return f"evicting {names}" + (f" (waiting for {', '.join(self.blocked_by)})" if self.blocked_by else "")


def plan(need_gb: float | None, residents: list[Resident], device: Device, now: float,
         oldest_wait: float = 0.0) -> Plan:
    """Pure: which residents go so that ``need_gb`` fits on ``device`` (``oldest_wait``: seconds the load's
    oldest waiting request has waited)."""
    def size(gb: float | None) -> float:
        return device.capacity_gb if gb is None else gb

    need = size(need_gb)
    if need > device.capacity_gb:
        return Plan(no_room=f"needs {need:g} GB; GPU {device.name} has {device.capacity_gb:g} GB")
    free = device.capacity_gb - sum(size(r.footprint_gb) for r in residents)
    if residents and device.exclusive:
        chosen = list(residents)
    else:
        chosen = []
        for resident in sorted(residents, key=lambda r: (r.busy, r.last_used, r.name)):
            if free >= need:
                break
            chosen.append(resident)
            free += size(resident.footprint_gb)
    starving = oldest_wait >= device.max_wait
    blocked = tuple(r.name for r in chosen if r.protected(now, device) and not (starving and r.state == "loaded"))
    return Plan(tuple(chosen), blocked)


@dataclass
class Ledger:
    """A GPU's budget and residents, as ``/v1/admin/gpu-memory`` shows it."""

    device: Device
    residents: list[Resident] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        used = sum(self.device.capacity_gb if r.footprint_gb is None else r.footprint_gb for r in self.residents)
        return {"id": self.device.name, "capacity_gb": self.device.capacity_gb, "exclusive": self.device.exclusive,
                "min_residency": self.device.min_residency, "max_wait": self.device.max_wait,
                "used_gb": round(used, 3), "free_gb": round(self.device.capacity_gb - used, 3),
                "residents": [{"id": r.name, "state": r.state, "footprint_gb": r.footprint_gb, "busy": r.busy,
                               "last_used": r.last_used} for r in self.residents]}


def device_of(name: str) -> Device | None:
    """The declared GPU ``name``, its capacity from nvidia-smi when not declared; None when unknown."""
    if not name:
        return None
    row = Gpu.objects.filter(name=name).first()
    capacity = row.memory_gb if row is not None else None
    if capacity is None:
        found = next((g for g in gpus() if name in (g.index, g.uuid)), None)
        capacity = found.total_mib / 1024 if found is not None else None
    if capacity is None:
        return None
    if row is None:
        return Device(name, capacity)
    return Device(name, capacity, row.exclusive, float(row.min_residency), float(row.max_wait))


def footprint(serve: Serve) -> float | None:
    return serve.vram_measured_gb if serve.vram_measured_gb is not None else serve.vram_gb


def residents_of(device: str, *, besides: int | None = None) -> list[Resident]:
    """What holds memory on ``device``: loaded and unloading serves, and loading ones whose engine has started
    (a load still queued, or itself waiting for room, holds nothing: counting it would deadlock two loads)."""
    serves = [s for s in Serve.objects.filter(gpu=device, model_state__in=HOLDING_STATES).exclude(pk=besides)
              if s.run_by != Runtime.REMOTE
              and (s.model_state != ModelState.LOADING or runtime_for(s).observe(s).running)]
    if not serves:
        return []
    seen = _queues([s.name for s in serves])
    out = []
    for serve in serves:
        waiting, holding, last = seen.get(serve.name, (0, 0, None))
        loaded_at = serve.state_changed_at.timestamp() if serve.state_changed_at else 0.0
        busy = bool(waiting or holding) or in_flight(serve.name) > 0
        out.append(Resident(serve.name, serve.pk, serve.model_state, footprint(serve), loaded_at,
                            max(last or 0.0, loaded_at), busy))
    return out


def oldest_wait(serve: str, now: float) -> float:
    """Seconds the oldest request waiting for ``serve`` has waited (0: none waits)."""
    client = _redis()
    try:
        oldest = client.zrange(queue_keys(serve)[2], 0, 0, withscores=True)
    except redis.RedisError:
        return 0.0
    finally:
        client.close()
    return max(now - oldest[0][1], 0.0) if oldest else 0.0


def plan_for(serve: Serve, now: float | None = None) -> tuple[Device | None, Plan]:
    now = time.time() if now is None else now
    device = device_of(serve.gpu)
    if device is None:
        return None, Plan()
    return device, plan(footprint(serve), residents_of(device.name, besides=serve.pk), device, now,
                        oldest_wait(serve.name, now))


def swap_plan(name: str) -> str:
    """What loading ``name`` would do now, in words (``POST /v1/route``): "would load B, evicting A after it drains"."""
    serve = Serve.objects.filter(name=name).first()
    if serve is None:
        return ""
    device, chosen = plan_for(serve)
    where = f" on GPU {device.name}" if device is not None else ""
    if chosen.no_room:
        return f"cannot load {name}{where}: {chosen.no_room}"
    if not chosen.evict:
        return f"would load {name}{where}"
    return f"would load {name}{where}, {chosen.describe()}"


def make_room(serve: Serve, deadline: float, unload: Callable[[int, str], object],
              waiting: Callable[[str], None] | None = None) -> Plan:
    """Evict what the plan says (``unload`` drains, then stops), waiting while protected residents block it.

    Returns the plan carried out; a plan with ``no_room`` (never fits) or still ``blocked_by`` at
    ``deadline`` (monotonic) is returned without evicting anything: the load fails with it."""
    while True:
        device, chosen = plan_for(serve)
        if device is None or chosen.no_room or not chosen.evict:
            return chosen
        if not chosen.blocked_by:
            break
        if time.monotonic() >= deadline:
            return chosen
        if waiting is not None:
            waiting(chosen.describe())
        time.sleep(REPLAN_SECONDS)
    for resident in chosen.evict:
        log.info("serve %s: evicting %s from GPU %s to make room", serve.name, resident.name, device.name)
        unload(resident.pk, f"evicted for {serve.name}")
    return chosen


def ledgers() -> list[Ledger]:
    """Every known device (declared, or reported by nvidia-smi) with its residents."""
    names = list(Gpu.objects.values_list("name", flat=True))
    names += [g.index for g in gpus() if g.index not in names and g.uuid not in names]
    out = []
    for name in names:
        device = device_of(name)
        if device is not None:
            out.append(Ledger(device, residents_of(name)))
    return out


def _queues(names: list[str]) -> dict[str, tuple[int, int, float | None]]:
    client = _redis()
    try:
        return occupancy(client, names)
    except redis.RedisError:
        return {}
    finally:
        client.close()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
