"""What a run talks to: a serve from the serves table, or any OpenAI-compatible base URL and model.

``--serve NAME`` is resolved here once, so the command, the Celery task and the
console agree on what a name means; a target that does not answer is reported
with the command that starts it, not with a connection error.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from evals.errors import BadTarget, TargetUnavailable, UnknownServe
from serves.lifecycle import start_hint
from serves.models import Serve

# A reachability check is one small GET; a serve that takes longer than this is not ready for an eval.
REACHABILITY_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str
    serve_id: int | None = None
    serve_name: str = ""

    @property
    def label(self) -> str:
        return self.serve_name or f"{self.model} @ {self.base_url}"


def target_of_serve(serve: Serve) -> Target:
    return Target(serve.effective_base_url, serve.served_model, serve.pk, serve.name)


def resolve_target(*, serve: str | None = None, base_url: str | None = None, model: str | None = None) -> Target:
    """``serve`` by name, or ``base_url`` with ``model``; exactly one of the two forms."""
    if serve and (base_url or model):
        raise BadTarget("give either --serve or --base-url with --model, not both")
    if serve:
        found = Serve.objects.filter(name=serve).first()
        if found is None:
            known = ", ".join(Serve.objects.order_by("name").values_list("name", flat=True))
            raise UnknownServe(f"unknown serve {serve!r}", hint=f"known serves: {known}" if known
                               else "import a serves.toml first: python manage.py serves import FILE")
        if not found.effective_base_url:
            raise BadTarget(f"serve {serve!r} has neither a base_url nor a port")
        return target_of_serve(found)
    if base_url and model:
        return Target(base_url.rstrip("/"), model)
    raise BadTarget("a target is needed: --serve NAME, or --base-url URL with --model M")


def tier_targets(tier: str) -> list[Target]:
    """Every enabled serve of ``tier`` (by name), each a target; an unknown or empty tier is refused
    naming the tiers there are."""
    serves = [serve for serve in Serve.objects.filter(tier=tier, enabled=True).order_by("name")
              if serve.effective_base_url]
    if not serves:
        tiers = sorted(set(Serve.objects.filter(enabled=True).values_list("tier", flat=True)))
        raise UnknownServe(f"no enabled serve in tier {tier!r}",
                           hint=f"tiers: {', '.join(tiers)}" if tiers else
                           "import a serves.toml first: python manage.py serves import FILE")
    return [target_of_serve(serve) for serve in serves]


def target_from_run_fields(serve_id: int | None, base_url: str, model: str) -> Target | None:
    """The target a stored run names (its serve re-read, so a changed port is followed), or None."""
    if serve_id is not None:
        serve = Serve.objects.filter(pk=serve_id).first()
        if serve is not None:
            return target_of_serve(serve)
    if base_url:
        return Target(base_url, model)
    return None


def check_reachable(target: Target) -> None:
    """GET {base_url}/models; a target that does not answer raises ``TargetUnavailable`` with a hint."""
    try:
        answer = httpx.get(f"{target.base_url}/models", timeout=REACHABILITY_TIMEOUT)
    except httpx.HTTPError as exc:
        raise unavailable(target, f"{type(exc).__name__}: {exc}") from None
    if answer.status_code >= 500:
        raise unavailable(target, f"GET /models answered {answer.status_code}")


def unavailable(target: Target, cause: str) -> TargetUnavailable:
    """The error for a target that does not answer, with the command that brings it up where there is one."""
    serve = Serve.objects.filter(pk=target.serve_id).first() if target.serve_id is not None else None
    if serve is not None and serve.is_local:
        hint = f"start it with: {start_hint(serve)}"
    elif serve is not None:
        hint = f"serve {serve.name} is an upstream Anvil does not run: check that {target.base_url} is reachable"
    else:
        hint = f"check that an OpenAI-compatible server answers at {target.base_url}"
    return TargetUnavailable(f"{target.label} does not answer ({cause})", hint=hint)
