"""Usage per key, serve or day, from the decision log: requests, tokens, spend and errors (docs/keys.md).

One aggregate query over ``DecisionRecord`` (indexed by key and time), shared by ``GET /api/usage/``,
``manage.py apikey usage`` and the admin's key list.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDay

from inference.models import ApiKey
from routing.models import DecisionRecord

GROUPS = ("day", "serve", "key")


class UsageQueryError(ValueError):
    """A usage query that cannot be answered (an unknown key or grouping, a window the wrong way round)."""


def records(key: ApiKey | None = None, serve: str = "", start: dt.datetime | None = None,
            end: dt.datetime | None = None) -> QuerySet[DecisionRecord]:
    found = DecisionRecord.objects.all()
    if key is not None:
        found = found.filter(key_id=key.pk)
    if serve:
        found = found.filter(served_by=serve)
    if start is not None:
        found = found.filter(created_at__gte=start)
    if end is not None:
        found = found.filter(created_at__lt=end)
    return found


def usage(key: ApiKey | None = None, serve: str = "", start: dt.datetime | None = None,
          end: dt.datetime | None = None, group_by: str = "day") -> list[dict[str, Any]]:
    """Rows of {group, requests, prompt_tokens, completion_tokens, spend_usd, errors}, oldest or largest first."""
    if group_by not in GROUPS:
        raise UsageQueryError(f"group_by is one of {', '.join(GROUPS)}.")
    if start is not None and end is not None and start >= end:
        raise UsageQueryError("from is before to.")
    column = {"day": TruncDay("created_at"), "serve": F("served_by"), "key": F("key_id")}[group_by]
    rows = (records(key, serve, start, end).annotate(group=column).values("group")
            .annotate(requests=Count("id"), prompt_tokens=Sum("prompt_tokens"),
                      completion_tokens=Sum("completion_tokens"), spend_usd=Sum("spend_usd"),
                      errors=Count("id", filter=Q(status__gte=400)))
            .order_by("group"))
    names = dict(ApiKey.objects.values_list("pk", "name")) if group_by == "key" else {}
    out = []
    for row in rows:
        group = row["group"]
        if group_by == "day":
            group = group.date().isoformat()
        elif group_by == "key":
            group = names.get(group, "(no key)" if group is None else f"(deleted key {group})")
        out.append({"group": group, "requests": row["requests"], "prompt_tokens": row["prompt_tokens"] or 0,
                    "completion_tokens": row["completion_tokens"] or 0,
                    "spend_usd": float(row["spend_usd"] or Decimal(0)), "errors": row["errors"]})
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: sum(row[name] for row in rows)
            for name in ("requests", "prompt_tokens", "completion_tokens", "spend_usd", "errors")}
