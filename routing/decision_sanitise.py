"""Making a decision record storable before it leaves the web process.

Records carry values from clients and upstreams (a requested model name, an upstream's
``usage``), so anything can arrive: NUL bytes (PostgreSQL text refuses them), lone
surrogates (no UTF-8 encoding), negative or 2**40 token counts (a check constraint, an
integer column), a count that is a string. One such record used to fail its whole batch
on every drain. Each value is made to fit its column here, from the model's own field
definitions, so the rules follow the schema: text is cleaned and cut to ``max_length``,
integers are type-checked and clamped to the column's range, floats must be finite, JSON
fields are cleaned recursively. A number that had to change leaves a note in ``notes``.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from routing.models import DecisionRecord

# A string inside a JSON field (a note, an upstream's error) is metadata, not a document.
JSON_TEXT_CAP = 2000
# Deeper than any record the relay builds; also what stops a self-referencing list.
JSON_DEPTH_CAP = 16
NOTE_CAP = 200

_SURROGATE = re.compile("[\ud800-\udfff]")
# The portable ranges (PostgreSQL's), not the current backend's: a row written on SQLite
# must still load into PostgreSQL, and no database connection is needed to know them.
_INTEGER_RANGES = BaseDatabaseOperations.integer_field_ranges
_FIELDS: dict[str, models.Field[Any, Any]] = {f.name: f for f in DecisionRecord._meta.concrete_fields}


def clean_text(value: str, cap: int | None = None) -> str:
    """Drop NULs, replace lone surrogates with U+FFFD, and cut to ``cap`` characters."""
    if value.isascii():  # the usual case, and no surrogate can hide in ASCII: one C-level scan
        text = value.replace("\x00", "") if "\x00" in value else value
    else:
        text = _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    return text if cap is None else text[:cap]


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: clean strings (keys too), finite numbers, lists for tuples, ``str()`` for the rest."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value, JSON_TEXT_CAP)
    if depth >= JSON_DEPTH_CAP:
        return "…"
    if isinstance(value, dict):
        return {clean_text(str(k), JSON_TEXT_CAP): clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v, depth + 1) for v in value]
    return clean_text(str(value), JSON_TEXT_CAP)


def sanitise_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` (known fields only) whose every value its column can hold."""
    clean: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in record.items():
        clean[name] = _FITTERS[name](value, notes)
    if notes:
        existing = clean.get("notes", [])
        clean["notes"] = (existing if isinstance(existing, list) else [existing]) + notes
    if "id" not in clean:  # a stable id makes a re-delivered record a duplicate the insert ignores
        clean["id"] = str(uuid.uuid4())
    clean.setdefault("created_at", timezone.now().isoformat())
    return clean


Fitter = Callable[[Any, list[str]], Any]


def _uuid(value: Any, notes: list[str]) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(uuid.uuid4())


def _fitter(field: models.Field[Any, Any]) -> Fitter:
    """How a value is made to fit ``field``: chosen once per column, not per record (this runs per request)."""
    if isinstance(field, models.JSONField):
        return lambda value, notes: clean_json(value)
    if isinstance(field, models.UUIDField):
        return _uuid
    if isinstance(field, models.DateTimeField):
        return lambda value, notes: _timestamp(value)
    if isinstance(field, models.CharField):
        cap = field.max_length
        return lambda value, notes: "" if value is None else clean_text(value if isinstance(value, str)
                                                                        else str(value), cap)
    if isinstance(field, models.BooleanField):
        return lambda value, notes: bool(value)
    if isinstance(field, models.IntegerField):  # the Positive*IntegerFields too
        return lambda value, notes: _count(field, value, notes)
    if isinstance(field, models.FloatField):
        return lambda value, notes: _number(field, value, notes)
    if isinstance(field, models.DecimalField):
        return lambda value, notes: _decimal(field, value, notes)
    return lambda value, notes: clean_json(value)


def _count(field: models.Field[Any, Any], value: Any, notes: list[str]) -> int | None:
    if value is None:
        return None if field.null else field.get_default()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        notes.append(f"decision log: {field.name} was a {type(value).__name__}, not a count; not stored")
        return None if field.null else field.get_default()
    low, high = _INTEGER_RANGES[field.get_internal_type()]
    fitted = min(max(value, low), high)
    if fitted != value:
        notes.append(f"decision log: {field.name} {str(value)[:40]} is out of range; stored {fitted}"[:NOTE_CAP])
    return fitted


def _number(field: models.Field[Any, Any], value: Any, notes: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past float's range
            number = math.inf
        if math.isfinite(number):
            return number
    notes.append(f"decision log: {field.name} was not a finite number; not stored")
    return None


def _decimal(field: models.DecimalField[Any, Any], value: Any, notes: list[str]) -> str | None:
    """A finite number rounded to the column's places, within its digits (as text: no binary float on the way)."""
    number = _number(field, value, notes)
    if number is None:
        return None
    limit = 10.0 ** (field.max_digits - field.decimal_places) - 1
    if abs(number) > limit:
        notes.append(f"decision log: {field.name} {number:.3g} is out of range; not stored")
        return None
    return f"{number:.{field.decimal_places}f}"


def _timestamp(value: Any) -> str:
    if value is None:
        return timezone.now().isoformat()
    parsed: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
    if parsed is None:
        return timezone.now().isoformat()
    return (timezone.make_aware(parsed, UTC) if timezone.is_naive(parsed) else parsed).isoformat()


_FITTERS: dict[str, Fitter] = {name: _fitter(field) for name, field in _FIELDS.items()}
