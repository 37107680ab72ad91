"""Handing a task to the Celery workers: now, or not at all, and never waiting on its result.

The outcome of every task Anvil queues is a row (a ``ServeEvent``, an ``EvalRun``), so nobody waits on
a task's result and the sender does not subscribe to it: Celery's Redis result backend otherwise
subscribes per task, in the web process, and retries that subscription for 20 s when Redis is down.
A broker that does not answer fails the send within a few seconds (``QueueUnavailable``), so the
caller can put back what it changed instead of leaving a state nobody will act on.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from kombu.exceptions import OperationalError

SEND_OPTIONS: dict[str, Any] = {"ignore_result": True, "retry": True, "retry_policy": {
    "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}}


class QueueUnavailable(RuntimeError):
    """The broker (Redis) did not take a task: nothing was queued."""


def send(task: Task, args: tuple[Any, ...], queue: str = "", **options: Any) -> None:
    """Queue ``task`` now (on ``queue`` if given); QueueUnavailable when the broker does not take it."""
    try:
        task.apply_async(args, **SEND_OPTIONS, **({"queue": queue} if queue else {}), **options)
    except (OperationalError, OSError) as exc:
        raise QueueUnavailable(f"the task queue (Redis) did not take {task.name}: {exc}") from exc
