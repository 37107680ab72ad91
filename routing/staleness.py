"""Fingerprints: a change to a serve's identity marks its measured profile rows stale, saying why."""

from __future__ import annotations

from django.db import transaction

from routing.models import ProfileEntry
from serves.models import Serve


def changed_fields(measured: dict[str, object], current: dict[str, object]) -> list[str]:
    return [f"{name}: {measured.get(name)!r} -> {current.get(name)!r}"
            for name in sorted(set(measured) | set(current)) if measured.get(name) != current.get(name)]


@transaction.atomic
def mark_stale_profiles() -> int:
    """Mark every serve row whose fingerprint no longer matches its serve; returns how many were marked."""
    serves = {serve.name: serve for serve in Serve.objects.all()}
    marked = 0
    for entry in ProfileEntry.objects.select_for_update().filter(kind=ProfileEntry.Kind.SERVE, stale=False)\
            .exclude(fingerprint=""):
        serve = serves.get(entry.subject)
        if serve is None or serve.fingerprint() == entry.fingerprint:
            continue
        changes = changed_fields(entry.identity or {}, serve.identity()) if entry.identity else []
        entry.stale = True
        entry.stale_reason = ("identity changed: " + "; ".join(changes) if changes
                              else f"identity fingerprint changed ({entry.fingerprint} -> {serve.fingerprint()})")[:500]
        entry.save(update_fields=["stale", "stale_reason", "updated_at"])
        marked += 1
    return marked
