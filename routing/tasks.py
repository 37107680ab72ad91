"""Periodic routing upkeep: decision-log retention and stale profile rows."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from routing.staleness import mark_stale_profiles

DELETE_BATCH = 5000  # small enough that SQLite and PostgreSQL delete it without a long lock


def prune_decision_log(max_age_days: int, max_rows: int) -> int:
    """Delete records older than ``max_age_days`` and beyond the newest ``max_rows``, in batches."""
    deleted = 0
    cutoff = timezone.now() - timedelta(days=max_age_days)
    while True:
        ids = list(DecisionRecord.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:DELETE_BATCH])
        if not ids:
            break
        deleted += DecisionRecord.objects.filter(pk__in=ids).delete()[0]
    keep_after = DecisionRecord.objects.order_by("-created_at").values_list("created_at", flat=True)[max_rows:
                                                                                                    max_rows + 1]
    if keep_after:
        boundary = keep_after[0]
        while True:
            ids = list(DecisionRecord.objects.filter(created_at__lte=boundary)
                       .values_list("pk", flat=True)[:DELETE_BATCH])
            if not ids:
                break
            deleted += DecisionRecord.objects.filter(pk__in=ids).delete()[0]
    return deleted


@shared_task(name="routing.prune_decisions", time_limit=900, soft_time_limit=870)
def prune_decisions() -> int:
    return prune_decision_log(settings.ANVIL_DECISION_RETENTION_DAYS, settings.ANVIL_DECISION_RETENTION_ROWS)


@shared_task(name="routing.mark_stale_profiles", time_limit=120, soft_time_limit=90)
def mark_stale() -> int:
    return mark_stale_profiles()


@shared_task(name="routing.drain_decisions", time_limit=60, soft_time_limit=50)
def drain_decision_queue() -> int:
    return drain_decisions()
