"""Celery tasks for the serve lifecycle: thin wrappers over serves.actions (ids in, dicts out)."""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task

from serves.actions import do_lifecycle, do_status
from serves.models import Serve

# A lifecycle operation may pull an image and start an engine: minutes, not seconds.
LIFECYCLE_TIME_LIMIT = 1800
SWEEP_TIME_LIMIT = 300


@shared_task(name="serves.up", time_limit=LIFECYCLE_TIME_LIMIT, soft_time_limit=LIFECYCLE_TIME_LIMIT - 60)
def serve_up(serve_id: int, requested_by: str) -> dict[str, object]:
    return asdict(do_lifecycle(serve_id, "up", requested_by))


@shared_task(name="serves.down", time_limit=LIFECYCLE_TIME_LIMIT, soft_time_limit=LIFECYCLE_TIME_LIMIT - 60)
def serve_down(serve_id: int, requested_by: str) -> dict[str, object]:
    return asdict(do_lifecycle(serve_id, "down", requested_by))


@shared_task(name="serves.status", time_limit=120, soft_time_limit=90)
def serve_status(serve_id: int, requested_by: str) -> dict[str, object]:
    return asdict(do_status(serve_id, requested_by))


@shared_task(name="serves.sweep_status", time_limit=SWEEP_TIME_LIMIT, soft_time_limit=SWEEP_TIME_LIMIT - 30)
def sweep_status() -> int:
    """Keep every serve's last known state fresh; an event is written only when the state changed."""
    ids = list(Serve.objects.values_list("pk", flat=True))
    for serve_id in ids:
        do_status(serve_id, "status sweep", record=False)
    return len(ids)
