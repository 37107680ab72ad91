"""The keys page's rows: each key's settings, its last 24 hours (requests, tokens), and its budget's state."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count, Sum
from django.utils import timezone

from inference.key_budget import spent_in_period
from inference.models import ApiKey
from routing.models import DecisionRecord


def key_rows(now: dt.datetime | None = None) -> list[dict[str, Any]]:
    now = now or timezone.now()
    day = {row["key_id"]: row for row in DecisionRecord.objects.filter(
        created_at__gte=now - dt.timedelta(hours=24), key_id__isnull=False).values("key_id").annotate(
        requests=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))}
    rows = []
    for key in ApiKey.objects.order_by("revoked_at", "name"):
        used = day.get(key.pk, {})
        budget = None
        if key.budget_usd is not None:
            spent = spent_in_period(key.pk, key.budget_period, now)
            share = float(100 * spent / key.budget_usd) if key.budget_usd else 0.0
            budget = {"spent": spent, "limit": key.budget_usd, "period": key.budget_period, "share": round(share),
                      "alert": share >= key.budget_alert}
        rows.append({
            "key": key, "requests_24h": used.get("requests", 0),
            "tokens_24h": (used.get("prompt") or 0) + (used.get("completion") or 0),
            "limits": ", ".join(f"{label} {getattr(key, name)}" for name, label in
                                (("rpm", "rpm"), ("tpm", "tpm"), ("max_concurrent", "at once"))
                                if getattr(key, name) is not None) or "none",
            "reach": ", ".join(key.reach or []) or "everything",
            "budget": budget,
        })
    return rows


