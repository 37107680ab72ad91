"""The policy: from the enabled serves to an ordered list of candidates, each with its verdict and notes.

1. hard constraints: the context must fit (nothing fits -> ``too_large``, a 413), tools
   must be supported, images go only to serves that take them (no serve offered takes
   them -> ``modality_unsupported``, a 400);
2. the metered-cloud gate: metered tiers only for the work classes allowed to use them;
3. the deny filter (fail-closed): a serve the profile denies is never a candidate, and
   ``denied`` says which cell denied it, so a refusal can say the profile caused it;
4. only loaded serves answer (a serve loading, unloaded or failed is excluded, saying so), except
   one loaded on demand, which a request may wait for; order: resident first, then by tier cost;
5. not confident -> the pool collapses to the safer (most capable) tier present;
6. a pinned tier (a tier named as ``model``) is a preference: it goes first when it is allowed;
   when it is not, the request goes to the gated pool with a note saying why.
A request naming a model is routed over that model's serves only (``routing/model_names.py``): its
``named`` input keeps the pool as given (no collapse: the client chose).
Availability (open circuits, serves that are down) is judged per attempt, after this:
it can skip a candidate but never add one the gate removed. Pure; never raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from routing.profile import DENY, Profile, is_metered
from serves.catalog import ServeView


@dataclass(frozen=True)
class Candidate:
    serve: ServeView
    verdict: str = "allow"
    notes: tuple[str, ...] = ()
    measured: bool = False  # the verdict is a profile row's, not a default (strict stream checks need one)


@dataclass(frozen=True)
class PolicyInput:
    work_class: str
    confident: bool = True
    needed_tokens: int = 0
    needs_tools: bool = False
    pinned_tier: str | None = None
    named: bool = False  # the serves are one model's (and its fallbacks): never collapse them
    needs_images: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    tier_order: tuple[str, ...] = ("fast", "heavy", "cloud")
    cloud_work_classes: frozenset[str] = frozenset({"planning", "multi-file-refactor", "review", "long-context"})


@dataclass(frozen=True)
class Route:
    candidates: tuple[Candidate, ...]
    excluded: tuple[tuple[str, str], ...] = ()  # (serve, why)
    too_large: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    modality_unsupported: bool = False
    denied: tuple[tuple[str, str], ...] = ()  # (serve, the profile cell that denied it): a subset of excluded


def tier_rank(tier: str, config: PolicyConfig) -> int:
    return config.tier_order.index(tier) if tier in config.tier_order else len(config.tier_order)


def _takes_no_images(serve: ServeView) -> str:
    return f"images: the serve takes {', '.join(serve.modalities) or 'nothing'} only, not images"


HOST_SILENT = "host_silent"  # serves.catalog marks a serve so when its host agent stops beating (serves/hosts.py)
SILENT_REASON = "host_silent: its host agent stopped beating"


def route(serves: tuple[ServeView, ...], profile: Profile, request: PolicyInput, config: PolicyConfig) -> Route:
    if request.needs_images and serves and not any(serve.takes_images for serve in serves):
        # No candidate could take it whatever the profile says: a client error, said before any upstream call.
        return Route((), tuple((serve.name, _takes_no_images(serve)) for serve in serves), modality_unsupported=True,
                     notes=("the request carries images and no serve takes them",))
    candidates: list[Candidate] = []
    excluded: list[tuple[str, str]] = []
    denied: list[tuple[str, str]] = []
    fits_context = 0
    for serve in serves:
        if serve.context_limit and request.needed_tokens > serve.context_limit:
            needed, limit = request.needed_tokens, serve.context_limit
            excluded.append((serve.name, f"context: needs ~{needed} tokens, limit {limit}"))
            continue
        fits_context += 1
        if serve.load_error == HOST_SILENT:  # nothing drives it: not even a load on demand would come
            excluded.append((serve.name, SILENT_REASON))
            continue
        if not serve.loaded and not serve.on_demand:  # traffic goes only to a loaded serve (serves/loading.py)
            excluded.append((serve.name, f"not loaded ({serve.model_state})"))
            continue
        if request.needs_images and not serve.takes_images:
            excluded.append((serve.name, _takes_no_images(serve)))
            continue
        if request.needs_tools and not serve.supports_tools:
            excluded.append((serve.name, "tools: the serve cannot answer tool calls"))
            continue
        if is_metered(serve) and request.work_class not in config.cloud_work_classes:
            excluded.append((serve.name, f"metered gate: {request.work_class} may not use tier {serve.tier}"))
            continue
        verdict, notes = profile.verdict(serve, request.work_class)
        if verdict == DENY:
            excluded.append((serve.name, "; ".join(notes) or "denied"))
            denied.append((serve.name, profile.denial(serve, request.work_class)))
            continue
        if not serve.loaded:  # on demand (the only way an unloaded serve gets here): say what choosing it costs
            notes = (*notes, f"{serve.model_state}: a request loads it on demand and waits in its queue")
        candidates.append(Candidate(serve, verdict, notes, profile.measured(serve, request.work_class)))
    notes: list[str] = []
    if serves and not fits_context:
        return Route((), tuple(excluded), too_large=True, notes=("no serve's context fits this request",))

    # Resident first: a serve loaded on demand is waited for only when no loaded one may answer.
    candidates.sort(key=lambda c: (not c.serve.loaded, tier_rank(c.serve.tier, config), c.serve.name))

    if not request.confident and candidates and not request.named:
        safest = max(tier_rank(c.serve.tier, config) for c in candidates)
        kept = [c for c in candidates if tier_rank(c.serve.tier, config) == safest]
        if len(kept) < len(candidates):
            notes.append(f"not confident: pool collapsed to tier {kept[0].serve.tier}")
        candidates = kept

    if request.pinned_tier:
        first = [c for c in candidates if c.serve.tier == request.pinned_tier]
        if first:
            candidates = first + [c for c in candidates if c.serve.tier != request.pinned_tier]
            notes.append(f"pinned to tier {request.pinned_tier}")
        else:
            notes.append(f"pin to tier {request.pinned_tier} denied (no allowed serve in it); routed to the gated pool")
    return Route(tuple(candidates), tuple(excluded), False, tuple(notes), denied=tuple(denied))
