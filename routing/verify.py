"""Verifiers: pure functions that fail only what they can prove wrong about an answer.

Each returns a list of reason labels (empty: passed). All run in time linear in
the answer's length, including on adversarial input (thousands of fences).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    """An answer reduced to what verification needs, whichever dialect it came in."""

    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON text)
    finish: str = ""  # stop | length | tool_calls | other


@dataclass(frozen=True)
class Expectations:
    """What the request asked for that an answer can be held to."""

    caller_set_limit: bool
    tool_names: frozenset[str]
    tool_choice: Any = None  # OpenAI spelling: "auto" | "none" | "required" | {"function": {"name"}}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (Python's default accepts them; JSON does not)."""
    return json.loads(text, parse_constant=_reject_constant)


def non_empty(answer: Answer, expect: Expectations) -> list[str]:
    return [] if answer.text.strip() or answer.tool_calls else ["empty"]


def not_truncated(answer: Answer, expect: Expectations) -> list[str]:
    # A length stop the caller asked for (max_tokens) is the caller's choice, not a failure.
    return ["truncated"] if answer.finish == "length" and not expect.caller_set_limit else []


def tool_json_valid(answer: Answer, expect: Expectations) -> list[str]:
    for _name, arguments in answer.tool_calls:
        try:
            value = strict_json(arguments or "{}")
        except ValueError:
            return ["tool-json-invalid"]
        if not isinstance(value, dict):
            return ["tool-json-invalid"]
    return []


def tool_contract(answer: Answer, expect: Expectations) -> list[str]:
    labels = []
    names = [name for name, _ in answer.tool_calls]
    if any(name not in expect.tool_names for name in names):
        labels.append("tool-not-in-catalog")
    choice = expect.tool_choice
    if choice == "none" and names:
        labels.append("tool-choice-ignored")
    elif choice == "required" and not names:
        labels.append("tool-choice-ignored")
    elif isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        if wanted and names != [wanted] * len(names) or (wanted and not names):
            labels.append("tool-choice-ignored")
    return labels


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*$", re.MULTILINE)


def code_blocks(text: str) -> tuple[list[tuple[str, str]], bool]:
    """(language, body) of each fenced block, and whether a fence was left open. One pass."""
    blocks, open_fence, language, start = [], "", "", 0
    for match in _FENCE.finditer(text):
        fence = match.group(1)
        if not open_fence:
            open_fence, language, start = fence, match.group(2).lower(), match.end()
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not match.group(2):
            blocks.append((language, text[start:match.start()].strip("\n")))
            open_fence = ""
    return blocks, bool(open_fence)


def code_parses(answer: Answer, expect: Expectations) -> list[str]:
    blocks, unterminated = code_blocks(answer.text)
    labels = ["code-fence-unterminated"] if unterminated else []
    for language, body in blocks:
        if language in ("python", "py", "python3"):
            try:
                ast.parse(body)
            except (SyntaxError, ValueError):
                labels.append("python-does-not-parse")
        elif language == "json":
            try:
                strict_json(body)
            except ValueError:
                labels.append("json-does-not-parse")
    return labels


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def diff_well_formed(answer: Answer, expect: Expectations) -> list[str]:
    blocks, _ = code_blocks(answer.text)
    for language, body in blocks:
        if language not in ("diff", "patch"):
            continue
        if not _diff_ok(body.splitlines()):
            return ["diff-malformed"]
    return []


def _diff_ok(lines: list[str]) -> bool:
    old_left = new_left = 0
    saw_hunk = False
    for line in lines:
        header = _HUNK.match(line)
        if header:
            if old_left or new_left:
                return False
            old_left = int(header.group(1) or 1)
            new_left = int(header.group(2) or 1)
            saw_hunk = True
        elif line.startswith(("--- ", "+++ ", "diff ", "index ")) and not (old_left or new_left):
            continue
        elif old_left or new_left:
            if line.startswith("-"):
                old_left -= 1
            elif line.startswith("+"):
                new_left -= 1
            elif line.startswith(" ") or line == "":
                old_left, new_left = old_left - 1, new_left - 1
            elif line.startswith("\\"):
                continue
            else:
                return False
            if old_left < 0 or new_left < 0:
                return False
    return saw_hunk and old_left == 0 and new_left == 0


VERIFIERS = (non_empty, not_truncated, tool_json_valid, tool_contract, code_parses, diff_well_formed)


def verify(answer: Answer, expect: Expectations) -> list[str]:
    labels: list[str] = []
    for check in VERIFIERS:
        labels += check(answer, expect)
    return labels
