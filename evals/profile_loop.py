"""The profile loop: grades -> the candidate quality profile -> a reviewed diff -> promotion to live.

Which grades count, and how (the rules the candidate is built by):

1. Results of runs that went through all their cases only (``succeeded``, or
   ``gate_failed``: a failed gate is a measurement too). A failed or cancelled run
   measured part of a suite, and a part says little about the whole. A check that
   could not run (a ``harness_error``: its prompt did not fit, the serve refused
   our parameters, our own timeout) has no grade, so it never counts.
2. For each (run kind, subject), the newest succeeded run that measured it
   speaks for it: re-running ``planning`` or ``bootstrap`` replaces the earlier
   measurement instead of counting it twice, while measurements of different
   kinds (bootstrap history, a planning bake-off, a preflight) add up.
3. A result's score: the newest *operator* grade when there is one (an override
   replaces the automatic score); otherwise the mean of the automatic grades
   that count. A *verifier* grade (a deterministic check) counts while pending
   or accepted, not once overridden. A *judge* grade counts only once an
   operator accepted it: it is one model's opinion of another, and the review
   queue is where an opinion becomes a measurement (a *calibration* grade, a
   judge's grade of sampled live traffic, likewise). A result with no grade that
   counts (an error, a harness error, a skipped case, an exhausted reasoning
   budget) measures nothing.
4. Within a cell (serve or tier, work class), measurements of an earlier
   identity of the serve (another fingerprint than the newest measurement's) are
   left out: they describe a different model.
5. quality = sample-weighted mean of the scores (each result weighs its
   ``samples``), rounded to 6 places so float noise never flips a threshold;
   verdict: quality >= 0.85 allow, < 0.70 deny, between allow-with-verify.
6. A cell gets a verdict only once it has at least ``min_samples`` samples
   (``ANVIL_PROFILE_MIN_SAMPLES``, default 5): until then it is *insufficient
   data*, and the candidate has no row for it, so routing keeps its default.

``refresh_candidate()`` writes those cells into the candidate profile, touching
only cells whose values changed (so an unchanged re-run does not make every web
process reload its profile snapshot), and withdraws a row the loop wrote for a
cell that is now insufficient. Candidate cells no grade speaks for (put there by
``manage.py profile import``, say) are left as they are.
``profile_diff()`` compares candidate and live for the operator;
``promote()`` replaces live with the candidate in one transaction, and refuses
without confirmation a promotion that would leave a work class with no allowed
serve, or deny a serve every work class. Every live profile a promotion or a
revert makes is kept as a version (``ProfilePromotion``, with its rows), as is
the live profile it replaced when no version holds it yet; ``revert()``
restores any version in one transaction.
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

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from evals.errors import CandidateChanged, ConfirmationRequired, NothingToPromote, ProfileError
from evals.models import EvalResult, EvalRun, Grade, ProfilePromotion
from routing.models import ProfileEntry, Verdict, WorkClass
from routing.policy import PolicyInput, route
from routing.profile import DENY, Profile, profile_from_entries
from routing.profile_file import entries_from_rows, entry_rows
from routing.staleness import changed_fields
from serves.catalog import ServeView, load_enabled
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
LOOP_SOURCE = "evals: "  # how the rows this loop writes begin their source (an imported row's does not)
# Grades that are one model's opinion of another's answers: they count once an operator accepted them.
OPINION_SOURCES = frozenset({Grade.Source.JUDGE.value, "calibration"})


def min_samples() -> int:
    """How many samples a cell needs before its verdict leaves the default (``ANVIL_PROFILE_MIN_SAMPLES``)."""
    return int(settings.ANVIL_PROFILE_MIN_SAMPLES)


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
                    or (g.source in OPINION_SOURCES and g.review_status == Grade.Review.ACCEPTED))]
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
    sufficient: bool = True  # rule 6: enough samples for the verdict to count


def aggregate(measurements: Iterable[Measurement], floor: int | None = None) -> dict[CellKey, CellValue]:
    """Cells from measurements (rules 4 to 6; ``floor``: the samples a verdict needs, default
    ``min_samples()``); the result does not depend on the input's order."""
    floor = min_samples() if floor is None else floor
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
            source=(LOOP_SOURCE + ", ".join(f"{kind} run {run_id}" for kind, run_id in runs))[:200],
            sufficient=samples >= floor,
        )
    return cells


def measurements() -> list[Measurement]:
    """Every measurement that counts now (rules 1 to 3), read from the database."""
    rows = list(EvalResult.objects.filter(run__status__in=EvalRun.COMPLETED).exclude(subject="").values(
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
    for g in Grade.objects.filter(result__run__status__in=EvalRun.COMPLETED).values(
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
    insufficient: int = 0  # cells with fewer samples than min_samples: no row, the default stands
    withdrawn: int = 0  # rows this loop had written for cells that are now insufficient
    min_samples: int = 0

    def describe(self) -> str:
        line = (f"candidate profile: {self.created} cells added, {self.changed} changed, "
                f"{self.unchanged} unchanged")
        if self.insufficient:
            line += (f", {self.insufficient} with insufficient data (under {self.min_samples} samples: "
                     "the default stands)")
        if self.withdrawn:
            line += f", {self.withdrawn} withdrawn"
        return line + " (review the diff, then promote)"


@transaction.atomic
def refresh_candidate(floor: int | None = None) -> CandidateRefresh:
    """Write the measured cells into the candidate profile; returns what it did.

    ``floor`` overrides ``ANVIL_PROFILE_MIN_SAMPLES`` for this refresh.
    """
    floor = min_samples() if floor is None else floor
    cells = aggregate(measurements(), floor)
    serves = {serve.name: serve for serve in Serve.objects.all()}
    existing = {(e.kind, e.subject, e.work_class): e
                for e in ProfileEntry.objects.select_for_update().filter(profile=CANDIDATE)}
    created = changed = unchanged = insufficient = withdrawn = 0
    for key, cell in cells.items():
        entry = existing.get(key)
        if not cell.sufficient:
            insufficient += 1
            # A verdict this loop wrote from grades that no longer suffice goes; an operator's import stays.
            if entry is not None and entry.source.startswith(LOOP_SOURCE):
                entry.delete()
                withdrawn += 1
            continue
        fields = {"decision": cell.decision, "quality": cell.quality, "samples": cell.samples,
                  "measured_at": cell.measured_at, "fingerprint": cell.fingerprint, "identity": cell.identity,
                  "source": cell.source, **_staleness(key, cell, serves)}
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
    return CandidateRefresh(created, changed, unchanged, insufficient, withdrawn, floor)


@dataclass(frozen=True)
class Insufficient:
    """A cell the grades speak for, but with fewer samples than a verdict needs."""

    kind: str
    subject: str
    work_class: str
    samples: int
    needed: int
    quality: float


def insufficient_cells(floor: int | None = None) -> dict[CellKey, Insufficient]:
    """The cells that are "insufficient data" now, with their sample counts (the profile page shows them)."""
    floor = min_samples() if floor is None else floor
    return {key: Insufficient(*key, cell.samples, floor, cell.quality)
            for key, cell in aggregate(measurements(), floor).items() if not cell.sufficient}


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
    # Digest of both sides: promote(expected_token=...) refuses a diff that changed since the operator saw it.
    token: str

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


def _canonical(entries: Sequence[ProfileEntry]) -> str:
    rows = sorted([{name: getattr(e, name) for name in COPIED_FIELDS} for e in entries],
                  key=lambda row: (row["kind"], row["subject"], row["work_class"]))
    return json.dumps(rows, sort_keys=True, separators=(",", ":"), default=str)


def diff_token(live: Sequence[ProfileEntry], candidate: Sequence[ProfileEntry]) -> str:
    return hashlib.sha256(f"{_canonical(live)}\n{_canonical(candidate)}".encode()).hexdigest()


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
    return ProfileDiff(tuple(changes), diff_token(live, candidate))


def profile_diff() -> ProfileDiff:
    """Candidate against live, cell by cell, sorted by (kind, subject, work class)."""
    return diff_entries(list(ProfileEntry.objects.filter(profile=LIVE)),
                        list(ProfileEntry.objects.filter(profile=CANDIDATE)))


# --- what a change would do to routing ---------------------------------------------
@dataclass(frozen=True)
class LockoutWarning:
    """A work class no enabled serve could answer, or a serve denied every work class, after a change."""

    kind: str  # "work_class" | "serve"
    name: str
    text: str


def lockout_warnings(before: Sequence[ProfileEntry], after: Sequence[ProfileEntry],
                     serves: Sequence[ServeView] | None = None) -> list[LockoutWarning]:
    """What routing would newly refuse if the live profile went from ``before`` to ``after``, by name.

    Judged as routing judges (``routing.policy.route``, defaults and the metered gate included)
    against the enabled serves. Only what the change causes: a work class that no serve could
    answer before either is not the change's doing.
    """
    from routing.web_state import policy_config

    pool = tuple(load_enabled() if serves is None else serves)
    if not pool:
        return []
    old, new = profile_from_entries(before), profile_from_entries(after)
    config = policy_config()
    warnings: list[LockoutWarning] = []
    for work_class in WorkClass.values:
        now = route(pool, new, PolicyInput(work_class), config)
        if now.candidates or not route(pool, old, PolicyInput(work_class), config).candidates:
            continue
        why = "; ".join(f"{name}: {reason}" for name, reason in now.excluded)
        warnings.append(LockoutWarning("work_class", work_class,
                                       f"{work_class}: no serve would be allowed to answer it ({why})"))
    for serve in pool:
        if _denied_everything(new, serve) and not _denied_everything(old, serve):
            warnings.append(LockoutWarning("serve", serve.name,
                                           f"serve {serve.name} would be denied every work class"))
    return warnings


def _denied_everything(profile: Profile, serve: ServeView) -> bool:
    return all(profile.verdict(serve, work_class)[0] == DENY for work_class in WorkClass.values)


@dataclass(frozen=True)
class ProfileChangePlan:
    """What a promotion or a revert would change, for the operator to confirm: the diff and its warnings."""

    diff: ProfileDiff
    warnings: tuple[LockoutWarning, ...]
    target: ProfilePromotion | None = None  # the version a revert restores


def promotion_plan() -> ProfileChangePlan:
    live = list(ProfileEntry.objects.filter(profile=LIVE))
    candidate = list(ProfileEntry.objects.filter(profile=CANDIDATE))
    return ProfileChangePlan(diff_entries(live, candidate), tuple(lockout_warnings(live, candidate)))


def revert_plan(version_id: int) -> ProfileChangePlan:
    version = _restorable(version_id)
    live = list(ProfileEntry.objects.filter(profile=LIVE))
    restored = entries_from_rows(version.entries or [], LIVE)
    return ProfileChangePlan(diff_entries(live, restored), tuple(lockout_warnings(live, restored)), version)


def _confirmed(warnings: Sequence[LockoutWarning], confirmed: bool, what: str) -> None:
    if warnings and not confirmed:
        raise ConfirmationRequired(f"{what} needs confirmation: " + "; ".join(w.text for w in warnings),
                                   warnings=[w.text for w in warnings],
                                   hint="review the change and its warnings, then confirm it")


# --- promotion, versions, revert ------------------------------------------------------
def promote(*, promoted_by: str, expected_token: str | None = None, confirmed: bool = False) -> ProfilePromotion:
    """Replace the live profile with the candidate, all at once, and keep it as a version.

    ``expected_token`` is the token of the diff the operator reviewed: a diff that changed
    since (either side) is refused (``CandidateChanged``). A promotion that would leave a work
    class with no allowed serve, or deny a serve every work class, is refused unless
    ``confirmed`` (``ConfirmationRequired``, naming them). The candidate stays as it is.
    """
    with transaction.atomic():
        # Lock both sides: a concurrent refresh or promotion waits instead of interleaving (PostgreSQL).
        candidate = list(ProfileEntry.objects.select_for_update().filter(profile=CANDIDATE)
                         .order_by("kind", "subject", "work_class"))
        live = list(ProfileEntry.objects.select_for_update().filter(profile=LIVE))
        diff = diff_entries(live, candidate)
        if expected_token is not None and expected_token != diff.token:
            raise CandidateChanged("the candidate or the live profile changed after this diff was shown",
                                   hint="review the new diff, then promote again")
        if not candidate:
            raise NothingToPromote("the candidate profile is empty: promoting it would remove every live verdict",
                                   hint="to go back to an earlier live profile, revert to one of its versions")
        if not diff.has_changes:
            raise NothingToPromote("the candidate profile has the same verdicts as the live one")
        _confirmed(lockout_warnings(live, candidate), confirmed, "this promotion")
        return _make_live(live, candidate, diff, action=ProfilePromotion.Action.PROMOTE, by=promoted_by)


def revert(version_id: int, *, reverted_by: str, expected_token: str | None = None,
           confirmed: bool = False) -> ProfilePromotion:
    """Make version ``version_id``'s live profile live again, in one transaction; returns the new version.

    Refused like ``promote``: a diff changed since review, warnings not confirmed, or a version
    that is live already or was made before versions were kept.
    """
    with transaction.atomic():
        version = _restorable(version_id)
        live = list(ProfileEntry.objects.select_for_update().filter(profile=LIVE))
        restored = entries_from_rows(version.entries or [], LIVE)
        diff = diff_entries(live, restored)
        if expected_token is not None and expected_token != diff.token:
            raise CandidateChanged("the live profile changed after this revert was shown",
                                   hint="review the revert again")
        if not diff.has_changes:
            raise NothingToPromote(f"version {version.pk} is the live profile already")
        _confirmed(lockout_warnings(live, restored), confirmed, f"reverting to version {version.pk}")
        return _make_live(live, restored, diff, action=ProfilePromotion.Action.REVERT, by=reverted_by,
                          restored_from=version)


def _restorable(version_id: int) -> ProfilePromotion:
    version = ProfilePromotion.objects.filter(pk=version_id).first()
    if version is None:
        raise ProfileError(f"there is no profile version {version_id}",
                           hint="list them with: python manage.py profile versions")
    if not version.restorable:
        raise ProfileError(f"profile version {version_id} was made before versions were kept: its rows are unknown")
    return version


def profile_versions() -> list[ProfilePromotion]:
    """Every version, newest first."""
    return list(ProfilePromotion.objects.all())


def current_version(versions: Sequence[ProfilePromotion]) -> ProfilePromotion | None:
    """The newest version whose rows are the live profile now (None after an import, say)."""
    rows = entry_rows(ProfileEntry.objects.filter(profile=LIVE))
    return next((v for v in versions if v.entries is not None and v.entries == rows), None)


def _make_live(live: Sequence[ProfileEntry], new: Sequence[ProfileEntry], diff: ProfileDiff, *, action: str,
               by: str, restored_from: ProfilePromotion | None = None) -> ProfilePromotion:
    """Replace the live rows with ``new`` (inside the caller's transaction) and record the version.

    The live profile being replaced is kept first when no version holds it (never promoted, or
    imported since), so it can be restored too. Routing's snapshots see the new live profile on
    their next check: every new live row's ``updated_at`` is later than any row the table had,
    so the table fingerprint (row count, newest ``updated_at``) changes even when the count does not.
    """
    replaced = entry_rows(live)
    newest_version = ProfilePromotion.objects.filter(entries__isnull=False).first()
    kept_at = timezone.now()
    if newest_version is None or newest_version.entries != replaced:
        ProfilePromotion.objects.create(action=ProfilePromotion.Action.KEPT, promoted_by=by[:150], promoted_at=kept_at,
                                        entries=replaced, counts={"cells": len(replaced)})
    newest = ProfileEntry.objects.aggregate(newest=Max("updated_at"))["newest"]
    ProfileEntry.objects.filter(profile=LIVE).delete()
    ProfileEntry.objects.bulk_create([
        ProfileEntry(profile=LIVE, **{name: getattr(entry, name) for name in COPIED_FIELDS}) for entry in new])
    stamp = max(timezone.now(), kept_at + timedelta(microseconds=1))
    if newest is not None and stamp <= newest:  # a clock step back must not hide the change
        stamp = newest + timedelta(microseconds=1)
    ProfileEntry.objects.filter(profile=LIVE).update(updated_at=stamp)
    return ProfilePromotion.objects.create(
        action=action, promoted_by=by[:150], promoted_at=stamp, candidate_token=diff.token, counts=diff.counts(),
        changes=[_change_record(change) for change in diff.changes if change.status != "unchanged"],
        entries=entry_rows(ProfileEntry.objects.filter(profile=LIVE)), restored_from=restored_from)


def _change_record(change: CellChange) -> dict[str, object]:
    def brief(state: CellState | None) -> dict[str, object] | None:
        return None if state is None else {"decision": state.decision, "quality": state.quality,
                                           "samples": state.samples, "stale": state.stale}

    return {"kind": change.kind, "subject": change.subject, "work_class": change.work_class,
            "status": change.status, "fields": list(change.fields), "live": brief(change.live),
            "candidate": brief(change.candidate)}
