"""profile.json (schema version 2): the quality profile as a file, to review, diff, and carry between sites."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from routing.models import ProfileEntry, Verdict, WorkClass

SCHEMA_VERSION = 2
ENTRY_FIELDS = ("kind", "subject", "work_class", "decision", "quality", "samples", "measured_at", "fingerprint",
                "identity", "stale", "stale_reason", "source")


class ProfileFileError(ValueError):
    pass


def export_profile(profile: str) -> str:
    entries = []
    for entry in ProfileEntry.objects.filter(profile=profile).order_by("kind", "subject", "work_class"):
        row = {name: getattr(entry, name) for name in ENTRY_FIELDS}
        row["measured_at"] = entry.measured_at.isoformat() if entry.measured_at else None
        entries.append(row)
    document = {"schema_version": SCHEMA_VERSION, "profile": profile, "exported_at": timezone.now().isoformat(),
                "entries": entries}
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def _entry(row: Any, index: int) -> dict[str, Any]:
    where = f"entries[{index}]"
    if not isinstance(row, dict):
        raise ProfileFileError(f"{where} is not an object")
    unknown = set(row) - set(ENTRY_FIELDS)
    if unknown:
        raise ProfileFileError(f"{where}: unknown field(s) {sorted(unknown)}")
    for name in ("kind", "subject", "work_class", "decision"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise ProfileFileError(f"{where}.{name} is required")
    if row["kind"] not in ProfileEntry.Kind.values:
        raise ProfileFileError(f"{where}.kind must be serve or tier")
    if row["work_class"] not in WorkClass.values:
        raise ProfileFileError(f"{where}.work_class must be one of {', '.join(WorkClass.values)}")
    if row["decision"] not in Verdict.values:
        raise ProfileFileError(f"{where}.decision must be one of {', '.join(Verdict.values)}")
    quality = row.get("quality")
    if quality is not None and (not isinstance(quality, int | float) or not 0 <= quality <= 1):
        raise ProfileFileError(f"{where}.quality must be a number from 0 to 1")
    clean = {name: row[name] for name in ENTRY_FIELDS if name in row and row[name] is not None}
    if "measured_at" in clean:
        parsed = parse_datetime(str(clean["measured_at"]))
        if parsed is None:
            raise ProfileFileError(f"{where}.measured_at is not an ISO date-time")
        clean["measured_at"] = parsed
    return clean


@transaction.atomic
def import_profile(text: str, profile: str) -> int:
    """Replace ``profile``'s entries with the file's, all or nothing; returns the number of entries."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileFileError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise ProfileFileError(f"schema_version must be {SCHEMA_VERSION}")
    rows = [_entry(row, index) for index, row in enumerate(document.get("entries") or [])]
    ProfileEntry.objects.filter(profile=profile).delete()
    ProfileEntry.objects.bulk_create([ProfileEntry(profile=profile, **row) for row in rows])
    return len(rows)
