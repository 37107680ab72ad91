"""The tier-0 classifier: which work class a request is, deterministically, first rule wins.

1. very long input                       -> long-context
2. keyword rules (review > planning > multi-file-refactor > bounded-edit) over the last
   user turn, plus the system prompt only when it is short (so a harness's standing
   prompt cannot match every request); several classes matching -> not confident
3. thinking requested                    -> planning
4. tools present                         -> bounded-edit
5. otherwise                             -> chat
Pure: the request summary and the rules in, a ``Classification`` out. Never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SHORT_SYSTEM_PROMPT_WORDS = 150
LONG_CONTEXT_CHARS = 120_000  # ~30k tokens of English: past what the fast tiers are sized for


@dataclass(frozen=True)
class Rule:
    work_class: str
    priority: int
    keywords: tuple[str, ...]
    pattern: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(r"(?!x)x"))

    @classmethod
    def build(cls, work_class: str, priority: int, keywords: list[str]) -> Rule:
        words = tuple(sorted({k.strip().lower() for k in keywords if k.strip()}, key=len, reverse=True))
        alternatives = "|".join(re.escape(word) for word in words) or r"(?!x)x"
        return cls(work_class, priority, words, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))


@dataclass(frozen=True)
class RequestSummary:
    """What the classifier and the policy may know of a request: never stored, never logged."""

    last_user_text: str
    system_text: str
    total_chars: int
    has_tools: bool
    thinking: bool
    has_images: bool = False  # image content anywhere in the input: only serves that take images may answer


@dataclass(frozen=True)
class Classification:
    work_class: str
    confident: bool
    notes: tuple[str, ...]


def classify(request: RequestSummary, rules: tuple[Rule, ...],
             long_context_chars: int = LONG_CONTEXT_CHARS) -> Classification:
    if request.total_chars >= long_context_chars:
        return Classification("long-context", True, (f"input of {request.total_chars} characters",))
    haystack = request.last_user_text
    notes: list[str] = []
    if request.system_text:
        if len(request.system_text.split()) <= SHORT_SYSTEM_PROMPT_WORDS:
            haystack = request.system_text + "\n" + haystack
        else:
            notes.append("long system prompt not scanned")
    matched = [rule for rule in sorted(rules, key=lambda r: r.priority) if rule.pattern.search(haystack)]
    if matched:
        classes = [rule.work_class for rule in matched]
        if len(classes) > 1:
            return Classification(classes[0], False, (*notes, f"keywords of several classes: {', '.join(classes)}"))
        return Classification(classes[0], True, (*notes, f"keyword rule {classes[0]}"))
    if request.thinking:
        return Classification("planning", True, (*notes, "thinking requested"))
    if request.has_tools:
        return Classification("bounded-edit", True, (*notes, "tools present"))
    return Classification("chat", True, (*notes, "no rule matched"))


DEFAULT_RULES: dict[str, tuple[int, list[str]]] = {
    "review": (1, ["review", "code review", "audit", "critique", "find bugs", "security review", "pr review"]),
    "planning": (2, ["plan", "design", "architecture", "roadmap", "strategy", "trade-offs", "tradeoffs",
                     "break down", "migration plan"]),
    "multi-file-refactor": (3, ["refactor", "rename across", "across the codebase", "across files",
                                "multiple files", "restructure", "migrate"]),
    "bounded-edit": (4, ["fix", "edit", "patch", "change this", "add a test", "implement", "bug"]),
}
