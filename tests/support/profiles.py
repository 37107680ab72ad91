"""Quality profile rows for tests."""

from __future__ import annotations

from routing.models import ProfileEntry, WorkClass


def allow_tiers(*tiers: str, decision: str = "allow") -> None:
    """A live profile that gives ``decision`` to every work class on these tiers."""
    for tier in tiers:
        for work_class in WorkClass.values:
            ProfileEntry.objects.update_or_create(
                profile="live", kind="tier", subject=tier, work_class=work_class,
                defaults={"decision": decision, "quality": 0.9, "samples": 10, "source": "test"})
