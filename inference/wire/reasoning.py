"""Reasoning across dialects: one request for thinking, switched on the way the serve says it is.

Clients ask in three ways: Anthropic's ``thinking`` (``{"type": "enabled", "budget_tokens": N}``),
OpenAI's ``reasoning_effort`` (chat) or ``reasoning.effort`` (Responses), and llm-pool's
``thinking: "enabled" | "disabled"``. A serve declares how it is switched (``Serve.thinking``):

* ``effort``: OpenAI's ``reasoning_effort`` (gpt-oss on vLLM, OpenAI's reasoning models);
* ``template``: ``chat_template_kwargs.enable_thinking`` (Qwen 3 and friends on vLLM or SGLang);
* ``native``: Anthropic's own ``thinking`` block;
* ``""``: it cannot reason; the request goes without it and the decision record says so.

Nothing is dropped silently: what cannot be sent comes back as a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EFFORT_BUDGETS = {"minimal": 512, "low": 1024, "medium": 4096, "high": 16384}
MIN_ANTHROPIC_BUDGET = 1024  # Anthropic refuses a smaller budget_tokens


@dataclass(frozen=True)
class ReasoningAsk:
    """What a client asked of reasoning: on or off, and how hard (an OpenAI effort word)."""

    enabled: bool
    effort: str = "medium"

    @property
    def budget(self) -> int:
        return EFFORT_BUDGETS.get(self.effort, EFFORT_BUDGETS["medium"])


def effort_of_budget(budget: int) -> str:
    if budget <= 1024:
        return "low"
    return "medium" if budget <= 8192 else "high"


def from_anthropic(thinking: Any) -> ReasoningAsk | None:
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "disabled":
        return ReasoningAsk(False)
    budget = thinking.get("budget_tokens")
    return ReasoningAsk(True, effort_of_budget(budget) if isinstance(budget, int) else "medium")


def from_effort(effort: Any) -> ReasoningAsk | None:
    if not isinstance(effort, str):
        return None
    return ReasoningAsk(False) if effort == "none" else ReasoningAsk(True, effort)


def from_switch(thinking: Any) -> ReasoningAsk | None:
    """llm-pool's request-level ``thinking``: "enabled", "disabled" or "default" (the serve's own)."""
    if thinking == "enabled":
        return ReasoningAsk(True)
    if thinking == "disabled":
        return ReasoningAsk(False)
    return None


def to_openai(body: dict[str, Any], ask: ReasoningAsk | None, mode: str, serve: str) -> list[str]:
    """Switch an OpenAI-dialect upstream body as asked; returns notes for what could not be sent."""
    if ask is None:
        return []
    if mode == "effort":
        if ask.enabled:
            body["reasoning_effort"] = ask.effort
            return []
        return [f"reasoning off was asked; serve {serve} is switched by reasoning_effort and keeps its default"]
    if mode == "template":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = ask.enabled
        body["chat_template_kwargs"] = kwargs
        return []
    state = "on" if ask.enabled else "off"
    return [f"reasoning {state} was asked; serve {serve} declares no reasoning switch, so none was sent"]


def to_anthropic(body: dict[str, Any], ask: ReasoningAsk | None, mode: str, serve: str) -> list[str]:
    """The same for an Anthropic upstream body (``max_tokens`` must exceed the budget)."""
    if ask is None:
        return []
    if mode != "native":
        state = "on" if ask.enabled else "off"
        return [f"reasoning {state} was asked; serve {serve} declares no reasoning switch, so none was sent"]
    if not ask.enabled:
        body["thinking"] = {"type": "disabled"}
        return []
    budget = max(MIN_ANTHROPIC_BUDGET, ask.budget)
    notes = []
    asked = int(body.get("max_tokens") or 0)
    if asked <= budget:
        body["max_tokens"] = budget + asked
        notes.append(f"max_tokens raised from {asked} to {budget + asked}: Anthropic counts the thinking budget "
                     f"({budget}) inside it")
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return notes
