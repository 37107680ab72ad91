"""Celery tasks for the serve lifecycle: thin wrappers over serves.actions and serves.loading (ids in,
dicts out), and the ``enqueue`` helpers that queue them after the current transaction commits (here,
not in actions.py: the actions know nothing of Celery, so the two modules import one way)."""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task
from django.db import transaction

from anvil_site.task_queue import send
from serves.actions import do_lifecycle, do_status
from serves.loading import do_load, do_unload, watch
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


# A load waits for the engine to be ready (ready_timeout, up to minutes). acks_late with
# reject_on_worker_lost: a worker killed mid-load has the task redelivered, and the redelivery
# takes over the dead worker's claim and adopts the process it started (never a second one).
@shared_task(name="serves.load", time_limit=LIFECYCLE_TIME_LIMIT, soft_time_limit=LIFECYCLE_TIME_LIMIT - 60,
             acks_late=True, reject_on_worker_lost=True)
def serve_load(serve_id: int, overrides: dict[str, object] | None, requested_by: str) -> dict[str, object]:
    return asdict(do_load(serve_id, overrides, requested_by))


@shared_task(name="serves.unload", time_limit=LIFECYCLE_TIME_LIMIT, soft_time_limit=LIFECYCLE_TIME_LIMIT - 60,
             acks_late=True, reject_on_worker_lost=True)
def serve_unload(serve_id: int, requested_by: str) -> dict[str, object]:
    return asdict(do_unload(serve_id, requested_by))


@shared_task(name="serves.watch", time_limit=60, soft_time_limit=50)
def watch_serves() -> int:
    """Every few seconds under beat: a loaded serve whose process died is failed with its log's tail; a serve
    idle past its ttl is unloaded; a model's replicas are loaded up to what its queue and bounds call for."""
    # serves.operations imports this module: import at call time
    from serves.idle import unload_idle
    from serves.replicas import scale_replicas

    noticed = watch()
    return noticed + len(unload_idle()) + len(scale_replicas())


_TASKS = {"up": serve_up, "down": serve_down, "status": serve_status, "unload": serve_unload}


def enqueue(action: str, serve_ids: list[int], requested_by: str) -> None:
    """Queue lifecycle tasks after the current transaction commits (now, outside one), each on its
    serve's queue. Outside a transaction a QueueUnavailable reaches the caller."""
    task = _TASKS[action]
    queues = {serve.pk: serve.lifecycle_queue for serve in Serve.objects.filter(pk__in=serve_ids).only("queue", "host")}
    transaction.on_commit(lambda: [send(task, (serve_id, requested_by), queues.get(serve_id) or "")
                                   for serve_id in serve_ids])


def enqueue_load(serve_id: int, overrides: dict[str, object], requested_by: str) -> None:
    """Queue one load (with its live overrides), as ``enqueue`` does."""
    serve = Serve.objects.filter(pk=serve_id).only("queue", "host").first()
    queue = serve.lifecycle_queue if serve is not None else ""
    transaction.on_commit(lambda: send(serve_load, (serve_id, overrides, requested_by), queue))
