"""The profile loop: grades -> the candidate quality profile -> a reviewed diff -> promotion to live.

Which grades count, and how (the rules the candidate is built by):

1. Results of *succeeded* runs only. A failed or cancelled run measured part of
   a suite, and a part says little about the whole.
2. For each (run kind, subject), the newest succeeded run that measured it
   speaks for it: re-running ``planning`` or ``bootstrap`` replaces the earlier
   measurement instead of counting it twice, while measurements of different
   kinds (bootstrap history, a planning bake-off, a preflight) add up.
3. A result's score: the newest *operator* grade when there is one (an override
   replaces the automatic score); otherwise the mean of the automatic grades
   that count. A *verifier* grade (a deterministic check) counts while pending
   or accepted, not once overridden. A *judge* grade counts only once an
   operator accepted it: it is one model's opinion of another, and the review
   queue is where an opinion becomes a measurement. A result with no grade that
   counts (an error, a skipped case, an exhausted reasoning budget) measures
   nothing.
4. Within a cell (serve or tier, work class), measurements of an earlier
   identity of the serve (another fingerprint than the newest measurement's) are
   left out: they describe a different model.
5. quality = sample-weighted mean of the scores (each result weighs its
   ``samples``), rounded to 6 places so float noise never flips a threshold;
   verdict: quality >= 0.85 allow, < 0.70 deny, between allow-with-verify.

``refresh_candidate()`` writes those cells into the candidate profile, touching
only cells whose values changed (so an unchanged re-run does not make every web
process reload its profile snapshot). Candidate cells no grade speaks for (put
there by ``manage.py profile import``, say) are left as they are.
``profile_diff()`` compares candidate and live for the operator;
``promote()`` replaces live with the candidate in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from evals.errors import CandidateChanged, NothingToPromote
from evals.models import EvalResult, EvalRun, Grade, ProfilePromotion
from routing.models import ProfileEntry, Verdict
from routing.staleness import changed_fields
from serves.models import Serve

ALLOW_AT = 0.85  # quality at or above: allow
DENY_BELOW = 0.70  # quality below: deny; in between: allow-with-verify
QUALITY_PLACES = 6

LIVE, CANDIDATE = ProfileEntry.Profile.LIVE, ProfileEntry.Profile.CANDIDATE
# What makes a cell "changed" in the diff; measured_at and source ride along on promotion.
DIFF_FIELDS = ("decision", "quality", "samples", "fingerprint", "stale")
COPIED_FIELDS = ("kind", "subject", "work_class", "decision", "quality", "samples", "measured_at", "fingerprint",
                 "identity", "stale", "stale_reason", "source")

CellKey = tuple[str, str, str]  # (kind, subject, work class)


def verdict_for(quality: float) -> str:
    if quality >= ALLOW_AT:
        return Verdict.ALLOW
    if quality < DENY_BELOW:
        return Verdict.DENY
    return Verdict.ALLOW_WITH_VERIFY


# --- grades -> scores ---------------------------------------------------------
@dataclass(frozen=True)
class GradeView:
    source: str
    review_status: str
    score: float
    created_at: datetime
    pk: int


def result_score(grades: Iterable[GradeView]) -> float | None:
    """The score a result counts with (rule 3), or None when no grade counts."""
    grades = list(grades)
    operator = [g for g in grades if g.source == Grade.Source.OPERATOR]
    if operator:
        return max(operator, key=lambda g: (g.created_at, g.pk)).score
    counted = [g.score for g in grades if g.review_status != Grade.Review.OVERRIDDEN
               and (g.source == Grade.Source.VERIFIER
                    or (g.source == Grade.Source.JUDGE and g.review_status == Grade.Review.ACCEPTED))]
    return sum(counted) / len(counted) if counted else None


@dataclass(frozen=True)
class Measurement:
    kind: str
    subject: str
    work_class: str
    score: float
    samples: int
    measured_at: datetime
    run_kind: str
    run_id: int
    fingerprint: str = ""
    identity: dict[str, Any] | None = None


@dataclass(frozen=True)
class CellValue:
    decision: str
    quality: float
    samples: int
    measured_at: datetime
    fingerprint: str
    identity: dict[str, Any]
    source: str


def aggregate(measurements: Iterable[Measurement]) -> dict[CellKey, CellValue]:
    """Cells from measurements (rules 4 and 5); the result does not depend on the input's order."""
    by_cell: dict[CellKey, list[Measurement]] = defaultdict(list)
    for m in measurements:
        by_cell[(m.kind, m.subject, m.work_class)].append(m)
    cells: dict[CellKey, CellValue] = {}
    for key in sorted(by_cell):
        found = sorted(by_cell[key], key=lambda m: (m.measured_at, m.run_id, m.run_kind))
        newest = next((m for m in reversed(found) if m.fingerprint), None)
        if newest is not None:
            found = [m for m in found if not m.fingerprint or m.fingerprint == newest.fingerprint]
        samples = sum(m.samples for m in found)
        # fsum: exact summation, so the mean is the same whatever order the rows came in.
        quality = round(math.fsum(m.score * m.samples for m in found) / samples, QUALITY_PLACES)
        runs = sorted({(m.run_kind, m.run_id) for m in found})
        cells[key] = CellValue(
            decision=verdict_for(quality), quality=quality, samples=samples,
            measured_at=max(m.measured_at for m in found),
            fingerprint=newest.fingerprint if newest else "",
            identity=dict(newest.identity or {}) if newest else {},
            source=("evals: " + ", ".join(f"{kind} run {run_id}" for kind, run_id in runs))[:200],
        )
    return cells


def measurements() -> list[Measurement]:
    """Every measurement that counts now (rules 1 to 3), read from the database."""
    rows = list(EvalResult.objects.filter(run__status=EvalRun.Status.SUCCEEDED).exclude(subject="").values(
        "pk", "run_id", "run__kind", "run__finished_at", "subject_kind", "subject", "work_class", "samples",
        "fingerprint", "identity"))
    newest_run: dict[tuple[str, str, str], tuple[datetime, int]] = {}
    for row in rows:
        key = (row["run__kind"], row["subject_kind"], row["subject"])
        stamp = (row["run__finished_at"], row["run_id"])
        if key not in newest_run or stamp > newest_run[key]:
            newest_run[key] = stamp
    rows = [row for row in rows
            if newest_run[(row["run__kind"], row["subject_kind"], row["subject"])][1] == row["run_id"]]
    grades: dict[int, list[GradeView]] = defaultdict(list)
    for g in Grade.objects.filter(result__run__status=EvalRun.Status.SUCCEEDED).values(
            "result_id", "source", "review_status", "score", "created_at", "pk"):
        grades[g["result_id"]].append(GradeView(g["source"], g["review_status"], g["score"], g["created_at"], g["pk"]))
    found = []
    for row in rows:
        score = result_score(grades.get(row["pk"], ()))
        if score is None:
            continue
        found.append(Measurement(row["subject_kind"], row["subject"], row["work_class"], score, row["samples"],
                                 row["run__finished_at"], row["run__kind"], row["run_id"], row["fingerprint"],
                                 row["identity"]))
    return found


# --- the candidate ------------------------------------------------------------
@dataclass(frozen=True)
class CandidateRefresh:
    created: int
    changed: int
    unchanged: int


@transaction.atomic
def refresh_candidate() -> CandidateRefresh:
    """Write the measured cells into the candidate profile; returns what it did."""
    cells = aggregate(measurements())
    serves = {serve.name: serve for serve in Serve.objects.all()}
    existing = {(e.kind, e.subject, e.work_class): e
                for e in ProfileEntry.objects.select_for_update().filter(profile=CANDIDATE)}
    created = changed = unchanged = 0
    for key, cell in cells.items():
        fields = {"decision": cell.decision, "quality": cell.quality, "samples": cell.samples,
                  "measured_at": cell.measured_at, "fingerprint": cell.fingerprint, "identity": cell.identity,
                  "source": cell.source, **_staleness(key, cell, serves)}
        entry = existing.get(key)
        if entry is None:
            ProfileEntry.objects.create(profile=CANDIDATE, kind=key[0], subject=key[1], work_class=key[2], **fields)
            created += 1
        elif any(getattr(entry, name) != value for name, value in fields.items()):
            for name, value in fields.items():
                setattr(entry, name, value)
            entry.save()
            changed += 1
        else:
            unchanged += 1
    return CandidateRefresh(created, changed, unchanged)


def _staleness(key: CellKey, cell: CellValue, serves: dict[str, Serve]) -> dict[str, object]:
    """A cell measured on an identity its serve no longer has is born stale, saying why."""
    serve = serves.get(key[1]) if key[0] == ProfileEntry.Kind.SERVE else None
    if serve is None or not cell.fingerprint or serve.fingerprint() == cell.fingerprint:
        return {"stale": False, "stale_reason": ""}
    changes = changed_fields(cell.identity, serve.identity()) if cell.identity else []
    reason = ("identity changed: " + "; ".join(changes)) if changes else "identity fingerprint changed"
    return {"stale": True, "stale_reason": reason[:500]}


# --- candidate vs live --------------------------------------------------------
@dataclass(frozen=True)
class CellState:
    decision: str
    quality: float | None
    samples: int
    fingerprint: str
    stale: bool
    measured_at: str
    source: str


@dataclass(frozen=True)
class CellChange:
    kind: str
    subject: str
    work_class: str
    status: str  # added | changed | removed | unchanged
    live: CellState | None
    candidate: CellState | None
    fields: tuple[str, ...] = ()  # the DIFF_FIELDS that differ, for "changed"


@dataclass(frozen=True)
class ProfileDiff:
    changes: tuple[CellChange, ...]
    token: str  # digest of the candidate: promote(expected_token=...) refuses a candidate changed since review

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("added", "changed", "removed", "unchanged"), 0)
        for change in self.changes:
            counts[change.status] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        return any(change.status != "unchanged" for change in self.changes)


def _state(entry: ProfileEntry) -> CellState:
    return CellState(entry.decision, entry.quality, entry.samples, entry.fingerprint, entry.stale,
                     entry.measured_at.isoformat() if entry.measured_at else "", entry.source)


def candidate_token(candidate: Sequence[ProfileEntry]) -> str:
    rows = sorted([{name: getattr(e, name) for name in COPIED_FIELDS} for e in candidate],
                  key=lambda row: (row["kind"], row["subject"], row["work_class"]))
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def diff_entries(live: Sequence[ProfileEntry], candidate: Sequence[ProfileEntry]) -> ProfileDiff:
    before = {(e.kind, e.subject, e.work_class): _state(e) for e in live}
    after = {(e.kind, e.subject, e.work_class): _state(e) for e in candidate}
    changes = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old is None:
            changes.append(CellChange(*key, "added", None, new))
        elif new is None:
            changes.append(CellChange(*key, "removed", old, None))
        else:
            differ = tuple(name for name in DIFF_FIELDS if getattr(old, name) != getattr(new, name))
            changes.append(CellChange(*key, "changed" if differ else "unchanged", old, new, differ))
    return ProfileDiff(tuple(changes), candidate_token(candidate))


def profile_diff() -> ProfileDiff:
    """Candidate against live, cell by cell, sorted by (kind, subject, work class)."""
    return diff_entries(list(ProfileEntry.objects.filter(profile=LIVE)),
                        list(ProfileEntry.objects.filter(profile=CANDIDATE)))


def promote(*, promoted_by: str, expected_token: str | None = None) -> ProfilePromotion:
    """Replace the live profile with the candidate, all at once, and write the audit row.

    ``expected_token`` is the diff's token the operator reviewed: a candidate that
    changed since is refused (``CandidateChanged``). The candidate stays as it is.
    Routing's snapshots see the new live profile on their next check: every new
    live row's ``updated_at`` is later than any row the table had, so the table
    fingerprint (row count, newest ``updated_at``) changes even when the count
    does not.
    """
    with transaction.atomic():
        # Lock both sides: a concurrent refresh or promotion waits instead of interleaving (PostgreSQL).
        candidate = list(ProfileEntry.objects.select_for_update().filter(profile=CANDIDATE)
                         .order_by("kind", "subject", "work_class"))
        live = list(ProfileEntry.objects.select_for_update().filter(profile=LIVE))
        diff = diff_entries(live, candidate)
        if expected_token is not None and expected_token != diff.token:
            raise CandidateChanged("the candidate profile changed after this diff was shown",
                                   hint="review the new diff, then promote again")
        if not candidate:
            raise NothingToPromote("the candidate profile is empty: promoting it would remove every live verdict")
        if not diff.has_changes:
            raise NothingToPromote("the candidate profile has the same verdicts as the live one")
        newest = ProfileEntry.objects.aggregate(newest=Max("updated_at"))["newest"]
        ProfileEntry.objects.filter(profile=LIVE).delete()
        ProfileEntry.objects.bulk_create([
            ProfileEntry(profile=LIVE, **{name: getattr(entry, name) for name in COPIED_FIELDS})
            for entry in candidate])
        stamp = timezone.now()
        if newest is not None and stamp <= newest:  # a clock step back must not hide the change
            stamp = newest + timedelta(microseconds=1)
        ProfileEntry.objects.filter(profile=LIVE).update(updated_at=stamp)
        return ProfilePromotion.objects.create(
            promoted_by=promoted_by[:150], promoted_at=stamp, candidate_token=diff.token, counts=diff.counts(),
            changes=[_change_record(change) for change in diff.changes if change.status != "unchanged"])


def _change_record(change: CellChange) -> dict[str, object]:
    def brief(state: CellState | None) -> dict[str, object] | None:
        return None if state is None else {"decision": state.decision, "quality": state.quality,
                                           "samples": state.samples, "stale": state.stale}

    return {"kind": change.kind, "subject": change.subject, "work_class": change.work_class,
            "status": change.status, "fields": list(change.fields), "live": brief(change.live),
            "candidate": brief(change.candidate)}
