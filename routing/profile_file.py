"""profile.json (schema version 2): the quality profile as a file, to review, diff, and carry between sites.

The same rows are what a profile version keeps (evals/profile_loop.py): ``entry_rows`` writes
them, ``entries_from_rows`` reads them back, checked as an import is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def entry_rows(entries: Iterable[ProfileEntry]) -> list[dict[str, Any]]:
    """Rows as JSON values, sorted by cell (kind, subject, work class)."""
    rows = []
    for entry in sorted(entries, key=lambda e: (e.kind, e.subject, e.work_class)):
        row = {name: getattr(entry, name) for name in ENTRY_FIELDS}
        row["measured_at"] = entry.measured_at.isoformat() if entry.measured_at else None
        rows.append(row)
    return rows


def entries_from_rows(rows: Iterable[Any], profile: str) -> list[ProfileEntry]:
    """Unsaved entries of ``profile`` from rows (``entry_rows``' or a file's), each checked; raises
    ``ProfileFileError`` naming the first bad one."""
    return [ProfileEntry(profile=profile, **_entry(row, index)) for index, row in enumerate(rows)]


def export_profile(profile: str) -> str:
    entries = entry_rows(ProfileEntry.objects.filter(profile=profile))
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
    entries = entries_from_rows(document.get("entries") or [], profile)
    ProfileEntry.objects.filter(profile=profile).delete()
    ProfileEntry.objects.bulk_create(entries)
    return len(entries)
