"""Verifiers on ordinary and adversarial answers."""

from __future__ import annotations

import pytest

from routing.verify import Answer, Expectations, code_blocks, verify

NO_TOOLS = Expectations(caller_set_limit=False, tool_names=frozenset())
WEATHER = Expectations(caller_set_limit=False, tool_names=frozenset({"get_weather"}))


@pytest.mark.parametrize(
    ("answer", "expect", "labels"),
    [
        (Answer("Paris is the capital.", [], "stop"), NO_TOOLS, []),
        (Answer("   ", [], "stop"), NO_TOOLS, ["empty"]),
        (Answer("Once upon a", [], "length"), NO_TOOLS, ["truncated"]),
        (Answer("Once upon a", [], "length"), Expectations(True, frozenset()), []),  # the caller set max_tokens
        (Answer("", [("get_weather", '{"city": "Paris"}')], "tool_calls"), WEATHER, []),
        (Answer("", [("get_weather", '{"city": Paris}')], "tool_calls"), WEATHER, ["tool-json-invalid"]),
        (Answer("", [("get_weather", '{"t": NaN}')], "tool_calls"), WEATHER, ["tool-json-invalid"]),
        (Answer("", [("get_weather", "[1, 2]")], "tool_calls"), WEATHER, ["tool-json-invalid"]),
        (Answer("", [("rm_rf", "{}")], "tool_calls"), WEATHER, ["tool-not-in-catalog"]),
        (Answer("ok", [], "stop"), Expectations(False, frozenset({"f"}), "required"), ["tool-choice-ignored"]),
        (Answer("", [("f", "{}")], "tool_calls"), Expectations(False, frozenset({"f"}), "none"),
         ["tool-choice-ignored"]),
        (Answer("", [("g", "{}")], "tool_calls"),
         Expectations(False, frozenset({"f", "g"}), {"function": {"name": "f"}}), ["tool-choice-ignored"]),
        (Answer("```python\ndef f(:\n```", [], "stop"), NO_TOOLS, ["python-does-not-parse"]),
        (Answer("```python\ndef f():\n    return 1\n```", [], "stop"), NO_TOOLS, []),
        (Answer('```json\n{"a": 1,}\n```', [], "stop"), NO_TOOLS, ["json-does-not-parse"]),
        (Answer("```python\nx = 1\n", [], "stop"), NO_TOOLS, ["code-fence-unterminated"]),
        (Answer("```diff\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n```", [], "stop"), NO_TOOLS, []),
        (Answer("```diff\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n```", [], "stop"), NO_TOOLS, ["diff-malformed"]),
        (Answer("```diff\nnot a diff at all\n```", [], "stop"), NO_TOOLS, ["diff-malformed"]),
    ],
)
def test_verifiers(answer: Answer, expect: Expectations, labels: list[str]) -> None:
    assert verify(answer, expect) == labels


@pytest.mark.timeout(10)
def test_many_unterminated_fences_take_linear_time() -> None:
    # A quadratic scan (each fence re-scanning the rest) would need ~10^10 steps here.
    adversarial = "```\n" * 100_001 + "x" * 10
    blocks, unterminated = code_blocks(adversarial)
    assert len(blocks) == 50_000 and unterminated
    assert verify(Answer(adversarial, [], "stop"), NO_TOOLS) == ["code-fence-unterminated"]


@pytest.mark.timeout(10)
def test_a_huge_diff_is_checked_in_one_pass() -> None:
    body = "@@ -1,100000 +1,100000 @@\n" + " same\n" * 100_000
    assert verify(Answer(f"```diff\n{body}```", [], "stop"), NO_TOOLS) == []
