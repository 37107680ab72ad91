"""A key's budget: what it may spend per calendar day or month (UTC), and what it has spent (docs/keys.md).

Spend is counted in Redis per key and period (``…:kl:<key>:spent:<period>``), where the limiter's one round
trip reads it: a request is refused once the period's spend (answers, plus the worst case of the requests in
flight) has reached the budget, so the overshoot is at most one request's reservation. The decision log is
the record: each answer's ``spend_usd`` is stored with it, and a period's counter that Redis lost (a restart
without persistence) is seeded again from those rows before the key's next request is admitted.

Crossing ``budget_alert`` percent is logged once per period (and shown on the key in the admin).
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from django.conf import settings
from django.db.models import Sum

from routing.models import DecisionRecord

log = logging.getLogger(__name__)


def period_bounds(period: str, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the calendar ``period`` ("day" or "month", UTC) holding ``now``."""
    now = now or dt.datetime.now(dt.UTC)
    start = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + dt.timedelta(days=1)
    start = start.replace(day=1)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def period_label(period: str, now: dt.datetime | None = None) -> str:
    start, _ = period_bounds(period, now)
    return start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def spent_key(key_id: int, period: str, now: dt.datetime | None = None) -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:kl:{key_id}:spent:{period_label(period, now)}"


def alerted_key(key_id: int, period: str) -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:kl:{key_id}:alerted:{period_label(period)}"


def seconds_left(period: str, now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    _, end = period_bounds(period, now)
    return max(int((end - now).total_seconds()), 1)


def spent_in_period(key_id: int, period: str, now: dt.datetime | None = None) -> Decimal:
    """The key's spend this period, from the decision log (what a lost counter is seeded from)."""
    start, end = period_bounds(period, now)
    total = DecisionRecord.objects.filter(key_id=key_id, created_at__gte=start, created_at__lt=end).aggregate(
        total=Sum("spend_usd"))["total"]
    return total or Decimal(0)


def alert(name: str, spent: float, budget: float, period: str) -> None:
    log.warning("API key %s has spent $%.4f of its $%.4f %sly budget (%.0f%%)", name, spent, budget, period,
                100 * spent / budget)
