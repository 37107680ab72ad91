"""The routing decision for one request: resolve ``model``, classify, apply the policy.

``decide`` is the one seam the front door calls. It never raises: what it cannot
do it says in ``notes``, with flags the caller turns into a status (unknown model:
404; nothing fits: 413; no candidate: 503).

``model`` resolves as:
  ``auto`` / ``anvil/auto`` / empty  -> classify, route
  ``anvil/<preset>``                  -> the preset's work class, route
  a serve name (or served model name) -> classify, route with the serve pinned
  a tier name                          -> classify, route with the tier pinned
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from routing.classifier import Classification, RequestSummary, Rule, classify
from routing.policy import Candidate, PolicyConfig, PolicyInput, route
from routing.profile import Profile
from serves.catalog import ServeView

AUTO_MODELS = frozenset({"", "auto", "anvil/auto"})
PRESETS = {
    "anvil/planning": "planning",
    "anvil/quick-edit": "bounded-edit",
    "anvil/review": "review",
    "anvil/chat": "chat",
    "anvil/chat-fast": "chat",
    "anvil/long-context": "long-context",
}
CHARS_PER_TOKEN = 4  # for the context-fit estimate only; usage is always the upstream's


@dataclass(frozen=True)
class Decision:
    requested_model: str
    work_class: str
    confident: bool
    candidates: tuple[Candidate, ...]
    excluded: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    unknown_model: bool = False
    too_large: bool = False

    def explain(self) -> dict[str, Any]:
        return {
            "model": self.requested_model,
            "work_class": self.work_class,
            "confident": self.confident,
            "candidates": [{"serve": c.serve.name, "tier": c.serve.tier, "verdict": c.verdict, "notes": list(c.notes)}
                           for c in self.candidates],
            "excluded": [{"serve": name, "why": why} for name, why in self.excluded],
            "notes": list(self.notes),
        }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def summarize(body: dict[str, Any]) -> RequestSummary:
    """What routing may know of a request body (either dialect); the text stays in memory only.

    Any shape is read without raising: the front door validates what each endpoint defines, but a
    field another endpoint defines (``messages`` sent to /v1/completions) arrives unchecked.
    """
    raw_messages = body.get("messages")
    messages = raw_messages if isinstance(raw_messages, list) else []
    system = _text(body.get("system"))
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("system", "developer"):
            system = (system + "\n" + _text(message.get("content"))).strip()
        elif message.get("role") == "user":
            last_user = _text(message.get("content"))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        last_user = prompt
    total = len(json.dumps(messages, ensure_ascii=False)) if messages else len(str(prompt or ""))
    reasoning = body.get("reasoning")
    thinking = body.get("thinking") or body.get("reasoning_effort") or (
        reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "disabled":
        thinking = None
    return RequestSummary(last_user, system, total + len(system), bool(body.get("tools")), bool(thinking))


def decide(body: dict[str, Any], serves: tuple[ServeView, ...], profile: Profile, rules: tuple[Rule, ...],
           config: PolicyConfig, *, dialects: frozenset[str] = frozenset({"openai", "anthropic"})) -> Decision:
    model = str(body.get("model") or "").strip()
    able = tuple(serve for serve in serves if serve.dialect in dialects)
    summary = summarize(body)
    pinned_serve = pinned_tier = None
    notes: list[str] = []
    if model in PRESETS:
        classification = Classification(PRESETS[model], True, (f"preset {model}",))
        if model == "anvil/chat-fast" and config.tier_order:
            pinned_tier = config.tier_order[0]  # chat on the cheapest tier first
    else:
        if model not in AUTO_MODELS:
            serve = next((s for s in serves if model in (s.name, s.served_model)), None)
            if serve is not None:
                pinned_serve = serve.name
                if serve.dialect not in dialects:
                    notes.append(f"serve {serve.name} speaks {serve.dialect}, which cannot answer this endpoint")
            elif any(s.tier == model for s in serves):
                pinned_tier = model
            else:
                return Decision(model, "", True, (), notes=(f"no enabled serve or tier is named {model!r}",),
                                unknown_model=True)
        classification = classify(summary, rules)
    request = PolicyInput(classification.work_class, classification.confident,
                          needed_tokens=summary.total_chars // CHARS_PER_TOKEN, needs_tools=summary.has_tools,
                          pinned_serve=pinned_serve, pinned_tier=pinned_tier)
    result = route(able, profile, request, config)
    return Decision(model, classification.work_class, classification.confident, result.candidates, result.excluded,
                    (*classification.notes, *notes, *result.notes), too_large=result.too_large)
