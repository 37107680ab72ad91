"""The routing decision for one request: resolve ``model``, classify, apply the policy.

``decide`` is the one seam the front door calls. It never raises: what it cannot
do it says in ``notes``, with flags the caller turns into a status (unknown model:
404; nothing fits: 413; images no serve takes: 400; no candidate: 503).

``model`` resolves as:
  ``auto`` / ``anvil/auto`` / empty  -> classify, route
  ``anvil/<preset>``                  -> the preset's work class, route
  a model (alias, serve name, served model) -> classify, route over that model's serves only
                                       (its replicas, then its fallback_to models: routing/model_names.py)
  a tier name                          -> classify, route with the tier pinned
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from routing.classifier import Classification, RequestSummary, Rule, classify
from routing.model_names import NamedModel, replicas_of, resolve
from routing.policy import HOST_SILENT, SILENT_REASON, Candidate, PolicyConfig, PolicyInput, route, tier_rank
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
# Image content: OpenAI chat parts, Anthropic blocks (also inside a tool_result), Responses input items.
IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
IMAGE_CHARS = 1000 * CHARS_PER_TOKEN  # what an image counts for in the context estimate, not its base64 length
NESTED_CONTENT_KEYS = ("content", "output")  # where a part nests more parts (tool_result, function_call_output)
MAX_CONTENT_DEPTH = 8  # messages > message > content > tool_result > content > block, with room to spare


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
    modality_unsupported: bool = False  # the request carries images and no serve that could answer takes them
    denied: tuple[tuple[str, str], ...] = ()  # (serve, the profile cell that denied it), for refusals
    # A request naming a serve that is not loaded: its model state (loading, unloaded, failed, unloading).
    # Another model never answers in its place.
    not_loaded: str = ""
    not_loaded_error: str = ""
    named: bool = False  # the client named a model: only it (and its fallback_to models) may answer

    def explain(self) -> dict[str, Any]:
        return {
            "model": self.requested_model,
            "work_class": self.work_class,
            "confident": self.confident,
            "candidates": [{"serve": c.serve.name, "tier": c.serve.tier, "verdict": c.verdict, "notes": list(c.notes)}
                           for c in self.candidates],
            "excluded": [{"serve": name, "why": why} for name, why in self.excluded],
            "denied_by_profile": [{"serve": name, "why": why} for name, why in self.denied],
            "notes": list(self.notes),
            "modality_unsupported": self.modality_unsupported,
            "not_loaded": self.not_loaded or None,
            "named_model": self.named,
        }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _image_parts(value: Any, depth: int = 0) -> list[dict[str, Any]]:
    if depth > MAX_CONTENT_DEPTH:
        return []
    if isinstance(value, list):
        return [part for item in value for part in _image_parts(item, depth + 1)]
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in IMAGE_PART_TYPES:  # a hostile body's "type" may be a list or a dict
            return [value]
        return [part for key in NESTED_CONTENT_KEYS for part in _image_parts(value.get(key), depth + 1)]
    return []


def summarize(body: dict[str, Any]) -> RequestSummary:
    """What routing may know of a request body (any dialect); the text stays in memory only.

    Any shape is read without raising: the front door validates what each endpoint defines, but a
    field another endpoint defines (``messages`` sent to /v1/completions) arrives unchecked.
    Chat messages (OpenAI, Anthropic) and Responses ``input`` items are read alike.
    """
    raw_messages = body.get("messages")
    messages = [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
    raw_input = body.get("input")
    if isinstance(raw_input, list):
        messages += [item for item in raw_input if isinstance(item, dict)]
    system = "\n".join(text for text in (_text(body.get("system")), _text(body.get("instructions"))) if text)
    last_user = ""
    for message in messages:
        if message.get("role") in ("system", "developer"):
            system = (system + "\n" + _text(message.get("content"))).strip()
        elif message.get("role") == "user":
            last_user = _text(message.get("content"))
        elif message.get("type") == "input_text":  # a bare Responses input item is the user's
            last_user = _text([message])
    prompt = body.get("prompt")
    if isinstance(raw_input, str):
        prompt = raw_input
    if isinstance(prompt, str):
        last_user = prompt
    total = len(json.dumps(messages, ensure_ascii=False)) if messages else len(str(prompt or ""))
    images = _image_parts(messages)
    if images:  # an image costs the model tokens of its own, not its base64 length
        total += len(images) * IMAGE_CHARS - sum(len(json.dumps(part, ensure_ascii=False)) for part in images)
    reasoning = body.get("reasoning")
    thinking = body.get("thinking") or body.get("reasoning_effort") or (
        reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "disabled":
        thinking = None
    return RequestSummary(last_user, system, max(total, 0) + len(system), bool(body.get("tools")), bool(thinking),
                          has_images=bool(images))


def decide(body: dict[str, Any], serves: tuple[ServeView, ...], profile: Profile, rules: tuple[Rule, ...],
           config: PolicyConfig, *, dialects: frozenset[str] = frozenset({"openai", "anthropic"}),
           loads: Mapping[str, int] | None = None) -> Decision:
    """``loads``: requests in flight per serve (across web processes), to balance a model's replicas."""
    model = str(body.get("model") or "").strip()
    able = tuple(serve for serve in serves if serve.dialect in dialects)
    summary = summarize(body)
    pinned_tier = None
    named: NamedModel | None = None
    if model in PRESETS:
        classification = Classification(PRESETS[model], True, (f"preset {model}",))
        if model == "anvil/chat-fast" and config.tier_order:
            pinned_tier = config.tier_order[0]  # chat on the cheapest tier first
    else:
        if model not in AUTO_MODELS:
            named = resolve(model, serves)
            if named is None and any(s.tier == model for s in serves):
                pinned_tier = model
            elif named is None:
                return Decision(model, "", True, (), notes=(f"no enabled serve or tier is named {model!r}",),
                                unknown_model=True)
        classification = classify(summary, rules)
    if named is not None:
        return _decide_named(named, able, summary, classification, profile, config, loads or {})
    request = PolicyInput(classification.work_class, classification.confident,
                          needed_tokens=summary.total_chars // CHARS_PER_TOKEN, needs_tools=summary.has_tools,
                          needs_images=summary.has_images, pinned_tier=pinned_tier)
    result = route(able, profile, request, config)
    return Decision(model, classification.work_class, classification.confident, result.candidates, result.excluded,
                    (*classification.notes, *result.notes), too_large=result.too_large,
                    modality_unsupported=result.modality_unsupported, denied=result.denied)


def _decide_named(named: NamedModel, able: tuple[ServeView, ...], summary: RequestSummary,
                  classification: Classification, profile: Profile, config: PolicyConfig,
                  loads: Mapping[str, int]) -> Decision:
    order = named.order
    pool = tuple(serve for serve in able if serve.name in order)
    notes = list(classification.notes)
    speaking = {serve.name for serve in pool}
    for serve in named.replicas:
        if serve.name not in speaking:
            notes.append(f"serve {serve.name} speaks {serve.dialect}, which cannot answer this endpoint")
    request = PolicyInput(classification.work_class, True, needed_tokens=summary.total_chars // CHARS_PER_TOKEN,
                          needs_tools=summary.has_tools, needs_images=summary.has_images, named=True)
    result = route(pool, profile, request, config)
    candidates = sorted(result.candidates, key=lambda c: (order[c.serve.name], not c.serve.loaded,
                                                          loads.get(c.serve.name, 0), c.serve.name))
    if len(named.replicas) > 1:
        notes.append(f"model {named.model}: {len(named.replicas)} replicas, the least busy first")
    if named.fallbacks:
        notes.append(f"model {named.model} may fall back to {', '.join(s.name for s in named.fallbacks)}")
    not_loaded = not_loaded_error = ""
    if not candidates:
        waiting = [s for s in named.replicas if not s.loaded and (not s.on_demand or s.load_error == HOST_SILENT)]
        waiting.sort(key=lambda s: s.model_state != "loading")  # "loading" says when to retry
        if waiting and not result.too_large and not result.modality_unsupported and not result.denied:
            not_loaded, not_loaded_error = waiting[0].model_state, waiting[0].load_error
    return Decision(named.model, classification.work_class, classification.confident, tuple(candidates),
                    result.excluded, (*notes, *result.notes), too_large=result.too_large,
                    modality_unsupported=result.modality_unsupported, denied=result.denied,
                    not_loaded=not_loaded, not_loaded_error=not_loaded_error, named=True)


def decide_for_path(model: str | None, serves: tuple[ServeView, ...], why_not: Callable[[ServeView], str | None],
                    work_class: str, config: PolicyConfig) -> Decision:
    """The candidates for a path only some serves answer (the HRM worker's /generate, tokenizers, embeddings).

    ``why_not(serve)`` says why a serve cannot answer, or None when it can. A named model is answered
    by that model alone (its replicas, if several serves carry the name): a loglikelihood or an
    embedding from another model is a different answer, not a fallback. No model: every serve
    that can, cheapest tier first.
    """
    named = (model or "").strip()
    pool = serves
    if named and named not in AUTO_MODELS:
        pool = replicas_of(named, serves)
        if not pool:
            return Decision(named, work_class, True, (), notes=(f"no enabled serve is named {named!r}",),
                            unknown_model=True)
    candidates, excluded, unloaded = [], [], []
    for serve in sorted(pool, key=lambda s: (not s.loaded, tier_rank(s.tier, config), s.name)):
        reason = why_not(serve)
        if reason is None and serve.load_error == HOST_SILENT:
            reason = SILENT_REASON
            unloaded.append(serve)
        elif reason is None and not serve.loaded and not serve.on_demand:  # on demand: a request loads it
            reason = f"not loaded ({serve.model_state})"
            unloaded.append(serve)
        if reason is None:
            candidates.append(Candidate(serve, "allow", ("answers this path",)))
        else:
            excluded.append((serve.name, reason))
    if named and not candidates and unloaded:  # the model asked for is there, just not loaded
        return Decision(named, work_class, True, (), tuple(excluded), not_loaded=unloaded[0].model_state,
                        not_loaded_error=unloaded[0].load_error)
    return Decision(named, work_class, True, tuple(candidates), tuple(excluded))
