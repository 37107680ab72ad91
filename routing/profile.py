"""The quality profile: a verdict for every (serve, work class), measured where it can be, defaulted where not.

Lookup: the serve's own entry, else its tier's, else the default:
  a metered (cloud) tier            -> allow
  an unmeasured local tier on
  planning or multi-file-refactor   -> deny (fail-closed)
  anything else                     -> allow-with-verify
An ``allow`` that is stale (its serve's identity changed since it was measured,
or marked stale) acts as ``allow-with-verify``.

A cell exists only once enough grades speak for it (``ANVIL_PROFILE_MIN_SAMPLES``,
evals/profile_loop.py): until then the default stands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from serves.catalog import ServeView

if TYPE_CHECKING:
    from routing.models import ProfileEntry

HIGH_RISK_CLASSES = frozenset({"planning", "multi-file-refactor"})
ALLOW, VERIFY, DENY = "allow", "allow-with-verify", "deny"


@dataclass(frozen=True)
class Cell:
    decision: str
    quality: float | None = None
    samples: int = 0
    fingerprint: str = ""
    stale: bool = False
    source: str = ""


@dataclass(frozen=True)
class Profile:
    serves: dict[tuple[str, str], Cell] = field(default_factory=dict)
    tiers: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def cell(self, serve: ServeView, work_class: str) -> tuple[str, Cell | None]:
        """The row that speaks for ``serve`` on ``work_class`` (its own, else its tier's) and where it is."""
        cell = self.serves.get((serve.name, work_class))
        if cell is not None:
            return f"serve {serve.name}", cell
        return f"tier {serve.tier}", self.tiers.get((serve.tier, work_class))

    def verdict(self, serve: ServeView, work_class: str) -> tuple[str, tuple[str, ...]]:
        where, cell = self.cell(serve, work_class)
        if cell is None:
            return default_verdict(serve, work_class)
        notes = [f"profile: {where} on {work_class} = {cell.decision}"
                 + (f" (quality {cell.quality:.2f}, {cell.samples} samples)" if cell.quality is not None else "")]
        stale = cell.stale or (where.startswith("serve") and cell.fingerprint and cell.fingerprint != serve.fingerprint)
        if stale and cell.decision == ALLOW:
            notes.append("stale measurement: allow acts as allow-with-verify")
            return VERIFY, tuple(notes)
        return cell.decision, tuple(notes)

    def denial(self, serve: ServeView, work_class: str) -> str:
        """Why the profile denies ``serve`` on ``work_class``, for a refusal: the cell that says so, or the default.

        Names the cell (serve or tier × work class) with its quality and samples, so an operator
        can find it on the profile page, and never reads as an outage.
        """
        where, cell = self.cell(serve, work_class)
        if cell is None:
            return (f"the quality profile's default denies {work_class} to serve {serve.name}: its tier "
                    f"{serve.tier} is local and unmeasured for {work_class} (fail-closed)")
        measured = (f"quality {cell.quality:.2f}, {cell.samples} samples" if cell.quality is not None
                    else f"{cell.samples} samples, set by an operator")
        origin = f"; {cell.source}" if cell.source else ""
        member = f", which serve {serve.name} is in" if where.startswith("tier") else ""
        return f"the quality profile denies {where} × {work_class}{member} ({measured}{origin})"

    def measured(self, serve: ServeView, work_class: str) -> bool:
        """Whether the verdict comes from a row (a measurement or an operator's override), not a default."""
        return (serve.name, work_class) in self.serves or (serve.tier, work_class) in self.tiers


def is_metered(serve: ServeView) -> bool:
    return serve.tier in settings.ANVIL_METERED_TIERS


def default_verdict(serve: ServeView, work_class: str) -> tuple[str, tuple[str, ...]]:
    if is_metered(serve):
        return ALLOW, (f"default: metered tier {serve.tier} is allowed",)
    if work_class in HIGH_RISK_CLASSES:
        return DENY, (f"default: unmeasured local tier {serve.tier} is denied {work_class} (fail-closed)",)
    return VERIFY, (f"default: unmeasured tier {serve.tier} answers {work_class} with verification",)


def profile_from_entries(entries: Iterable[ProfileEntry]) -> Profile:
    """A profile from rows of either side (what routing would do with the candidate, say)."""
    serves: dict[tuple[str, str], Cell] = {}
    tiers: dict[tuple[str, str], Cell] = {}
    for entry in entries:
        cell = Cell(entry.decision, entry.quality, entry.samples, entry.fingerprint, entry.stale, entry.source)
        (serves if entry.kind == "serve" else tiers)[(entry.subject, entry.work_class)] = cell
    return Profile(serves, tiers)


def load_live_profile() -> Profile:
    from routing.models import ProfileEntry

    return profile_from_entries(ProfileEntry.objects.filter(profile=ProfileEntry.Profile.LIVE))
