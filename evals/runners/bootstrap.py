"""``runeval bootstrap``: replay committed eval history into the candidate quality profile.

Each ``evals/fixtures/bootstrap/*.json`` file holds past graded results, already
aggregated per (serve or tier, work class) with their sample counts::

    {"schema_version": 1, "source": "where these numbers come from",
     "measured": [{"kind": "tier", "subject": "fast", "work_class": "chat", "quality": 0.91, "samples": 240}]}

Every entry becomes one result that stands for ``samples`` answers, with an
accepted verifier grade (the history was reviewed when it was made). The run
then updates the candidate profile like any other run: the same cell in two
files is their sample-weighted mean; a re-run replaces the previous bootstrap's
measurements instead of adding to them. The live profile is not touched until
an operator promotes the candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser

from evals.errors import BadParameters, FixtureError
from evals.models import EvalResult, Grade
from evals.parameters import reject_unknown
from evals.runs import RunContext, RunOutcome
from routing.models import ProfileEntry, WorkClass

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bootstrap"
SCHEMA_VERSION = 1
PARAMETERS = ("fixtures",)


@dataclass(frozen=True)
class Replayed:
    file: str
    source: str
    kind: str
    subject: str
    work_class: str
    quality: float
    samples: int


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--fixtures", type=Path, help=f"directory of *.json history (default: {FIXTURES})")


def parameters_from_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"fixtures": str(options["fixtures"])} if options.get("fixtures") else {}


def clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    reject_unknown("bootstrap", parameters, PARAMETERS)
    fixtures = parameters.get("fixtures")
    if fixtures is not None and (not isinstance(fixtures, str) or not fixtures):
        raise BadParameters("fixtures is a directory path")
    return dict(parameters)


def _entry(raw: Any, where: str, file: str, source: str) -> Replayed:
    if not isinstance(raw, dict):
        raise FixtureError(f"{where} is not an object")
    kind, subject, work_class = raw.get("kind"), raw.get("subject"), raw.get("work_class")
    if kind not in ProfileEntry.Kind.values:
        raise FixtureError(f"{where}.kind must be serve or tier")
    if not isinstance(subject, str) or not subject:
        raise FixtureError(f"{where}.subject is a serve or tier name")
    if work_class not in WorkClass.values:
        raise FixtureError(f"{where}.work_class must be one of {', '.join(WorkClass.values)}")
    quality, samples = raw.get("quality"), raw.get("samples")
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not 0 <= quality <= 1:
        raise FixtureError(f"{where}.quality must be a number from 0 to 1")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise FixtureError(f"{where}.samples must be a whole number of at least 1")
    return Replayed(file, source, str(kind), subject, str(work_class), float(quality), samples)


def load_history(root: Path) -> list[Replayed]:
    """Every entry of every file, in file order then entry order; a bad file refuses the whole replay."""
    files = sorted(root.glob("*.json")) if root.is_dir() else []
    if not files:
        raise FixtureError(f"{root}: no bootstrap fixtures (*.json)")
    found: list[Replayed] = []
    for path in files:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FixtureError(f"{path.name}: cannot be read ({exc})") from None
        if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
            raise FixtureError(f"{path.name}: schema_version must be {SCHEMA_VERSION}")
        entries = document.get("measured")
        if not isinstance(entries, list) or not entries:
            raise FixtureError(f"{path.name}: measured must be a non-empty list")
        source = str(document.get("source", ""))
        seen: set[tuple[str, str, str]] = set()
        for index, raw in enumerate(entries):
            entry = _entry(raw, f"{path.name}: measured[{index}]", path.name, source)
            key = (entry.kind, entry.subject, entry.work_class)
            if key in seen:
                raise FixtureError(f"{path.name}: measured[{index}] repeats {entry.kind} {entry.subject} / "
                                   f"{entry.work_class}; give one entry with the total samples")
            seen.add(key)
            found.append(entry)
    return found


def execute(ctx: RunContext) -> RunOutcome:
    parameters = clean_parameters(ctx.parameters)
    root = Path(parameters.get("fixtures") or FIXTURES)
    history = load_history(root)
    for entry in ctx.each(history, label=lambda e: f"{e.file}: {e.kind} {e.subject} / {e.work_class}"):
        result = ctx.record(name=f"{entry.file}: {entry.kind} {entry.subject} / {entry.work_class}",
                            subject_kind=entry.kind, subject=entry.subject, work_class=entry.work_class,
                            samples=entry.samples, verdict=EvalResult.Verdict.GRADED, score=entry.quality,
                            details={"fixture": entry.file, "source": entry.source})
        ctx.grade(result, score=entry.quality, grader=f"bootstrap:{entry.file}", note=entry.source,
                  review_status=Grade.Review.ACCEPTED)
    files = sorted({entry.file for entry in history})
    cells = len({(e.kind, e.subject, e.work_class) for e in history})
    lines = [f"replayed {len(history)} measurements ({sum(e.samples for e in history)} samples) "
             f"from {', '.join(files)} into {cells} candidate cells"]
    return RunOutcome({"files": files, "measurements": len(history), "cells": cells, "lines": lines})
