"""Which serves may answer a request, in order: the one seam the router plugs into.

The front door calls ``decide`` and tries the candidates it returns. Today:
a ``model`` naming a serve (or a served model name) pins it; ``auto``, an
``anvil/…`` preset or no model means the first enabled serve able to answer.
The routing issue replaces the body of this function (classifier, quality
profile, policy), not its callers. It never raises: what it cannot do it says
in ``notes`` and an empty candidate list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serves.catalog import ServeView

AUTO_MODELS = frozenset({"", "auto", "anvil/auto"})


@dataclass(frozen=True)
class Candidate:
    serve: ServeView
    verdict: str = "allow"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    requested_model: str
    candidates: tuple[Candidate, ...]
    pinned: bool = False
    unknown_model: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def decide(requested_model: str | None, serves: tuple[ServeView, ...], *,
           dialects: frozenset[str] = frozenset({"openai", "anthropic"})) -> Decision:
    """``dialects`` are the upstream dialects able to answer this endpoint (completions: openai only)."""
    model = (requested_model or "").strip()
    able = tuple(serve for serve in serves if serve.dialect in dialects)
    if model in AUTO_MODELS or model.startswith("anvil/"):
        if not able:
            return Decision(model, (), notes=("no enabled serve can answer this endpoint",))
        first = able[0]
        return Decision(model, (Candidate(first, notes=("first enabled serve able to answer",)),))
    for serve in serves:
        if model in (serve.name, serve.served_model):
            if serve.dialect not in dialects:
                note = f"serve {serve.name} speaks {serve.dialect}, which cannot answer this endpoint"
                return Decision(model, (), pinned=True, notes=(note,))
            return Decision(model, (Candidate(serve, notes=("pinned by model",)),), pinned=True)
    return Decision(model, (), unknown_model=True, notes=(f"no enabled serve is named {model!r}",))
