"""The tier-0 classifier, rule by rule."""

from __future__ import annotations

import pytest

from routing.classifier import DEFAULT_RULES, RequestSummary, Rule, classify

RULES = tuple(Rule.build(wc, prio, words) for wc, (prio, words) in DEFAULT_RULES.items())


def summary(user: str = "", system: str = "", tools: bool = False, thinking: bool = False,
            chars: int | None = None) -> RequestSummary:
    return RequestSummary(user, system, chars if chars is not None else len(user) + len(system), tools, thinking)


@pytest.mark.parametrize(
    ("request_summary", "work_class", "confident"),
    [
        (summary("hello there"), "chat", True),
        (summary("x", chars=500_000), "long-context", True),
        (summary("please review this change"), "review", True),
        (summary("Plan the migration to Postgres"), "planning", True),
        (summary("refactor the session handling"), "multi-file-refactor", True),
        (summary("fix the off-by-one"), "bounded-edit", True),
        (summary("review the plan"), "review", False),  # two classes: not confident, highest priority
        (summary("what is 2+2", thinking=True), "planning", True),
        (summary("what is 2+2", tools=True), "bounded-edit", True),
        (summary("previewing reviews"), "chat", True),  # whole words only
        (summary("REVIEW this"), "review", True),  # any case
    ],
)
def test_rules_in_order(request_summary: RequestSummary, work_class: str, confident: bool) -> None:
    result = classify(request_summary, RULES)
    assert (result.work_class, result.confident) == (work_class, confident), result.notes


def test_a_short_system_prompt_is_scanned() -> None:
    assert classify(summary("go", system="You review code."), RULES).work_class == "review"


def test_a_long_system_prompt_cannot_classify_every_request() -> None:
    harness = "You are a coding agent. You can plan, review, refactor and fix code. " * 20  # > 150 words
    result = classify(summary("hello", system=harness), RULES)
    assert result.work_class == "chat" and "long system prompt not scanned" in result.notes


def test_keywords_are_data() -> None:
    rules = (Rule.build("review", 1, ["lgtm?"]),)
    assert classify(summary("is this lgtm?"), rules).work_class == "review"
    assert classify(summary("please review"), rules).work_class == "chat"
