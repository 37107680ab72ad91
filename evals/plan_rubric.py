"""The planning rubric: five judge dimensions, scored from a plan's text structure alone.

The planning bake-off's judges score a plan on five dimensions. This rubric
scores the same five offline, with rules on the markdown's structure, so a
re-grade of committed plans is deterministic and byte-reproducible: no model,
no randomness, no clock, nothing that depends on the order of a dict.

The plan is read as markdown sections (``#`` headings, or a line that is only
``**bold**`` or ends with a colon) and list items (``1.``, ``1)``, ``-``, ``*``,
``+``; indented lines continue the item above). A section's heading puts it in
categories: *rollback*, *risk*, *verification* (tests, checks, acceptance), or,
failing those, *steps* (steps, plan, implementation, phases, rollout, …).

1. **coverage** — the task's requirements the plan addresses: a requirement
   counts when any of its terms appears in the plan as a whole word or phrase
   (any case; a plural "s" or "es" is allowed). Score: addressed / all.
2. **concreteness** — steps an engineer can act on: a step is concrete when it
   names an artefact (a `code span`, a file path or file name) or a quantity
   with a unit (``30 s``, ``5%``, ``2 GiB``). Score: concrete steps / steps,
   scaled down when there are fewer than ``MIN_STEPS`` steps.
3. **risk** — risks and a way back: half for risk items (``RISK_ITEMS`` for
   full marks), half for rollback items (``ROLLBACK_ITEMS`` for full marks; a
   rollback only mentioned in passing earns ``ROLLBACK_MENTION``).
4. **verification** — how we will know it worked: half for verification items
   (``CHECK_ITEMS`` for full marks), half for measurable ones (a number, a
   comparison such as "at least", "within", "p95", or a `command`).
5. **sequencing** — order and dependencies: half for numbered steps that run
   in sequence (at least ``MIN_NUMBERED`` of them; a new list may restart at 1),
   half for explicit dependencies between steps ("after step 2", "once", "before",
   "depends on", …; ``DEPENDENCY_REFS`` for full marks).

Every dimension is in 0..1, rounded to 4 places; a plan's overall score is the
mean of its five.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RUBRIC = "plan-rubric/1"
DIMENSIONS = ("coverage", "concreteness", "risk", "verification", "sequencing")
PLACES = 4

MIN_STEPS = 4
RISK_ITEMS = 3
ROLLBACK_ITEMS = 2
ROLLBACK_MENTION = 0.25
CHECK_ITEMS = 3
MEASURABLE_ITEMS = 2
MIN_NUMBERED = 3
DEPENDENCY_REFS = 3

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(?P<text>.*?)\s*#*\s*$")
_BOLD_LINE = re.compile(r"^\s*\*\*(?P<text>[^*]+?)\*\*\s*:?\s*$")
_COLON_LINE = re.compile(r"^(?P<text>[A-Za-z][^:]{0,58}):\s*$")
_ITEM = re.compile(r"^(?P<indent>\s*)(?:(?P<number>\d+)[.)]|[-*+])\s+(?P<text>\S.*)$")

_CATEGORY = {
    "rollback": re.compile(r"\b(roll ?backs?|revert\w*|back ?out|undo)\b", re.I),
    "risk": re.compile(r"\b(risks?|pitfalls?|failure modes?|concerns?|what could go wrong)\b", re.I),
    "verification": re.compile(r"\b(tests?|testing|verif\w*|validat\w*|acceptance|success criteria|checks?)\b",
                               re.I),
}
_STEPS = re.compile(r"\b(steps?|plan|implementation|approach|phases?|rollout|milestones?|tasks?|procedure|"
                    r"execution|work breakdown|migration)\b", re.I)
_ROLLBACK_MENTION = _CATEGORY["rollback"]
_CONCRETE = re.compile(
    r"`[^`]+`"  # a code span: a command, a setting, a function
    r"|(?<![\w/])(?:[\w.-]+/)+[\w.-]+"  # a path
    r"|\b[\w-]+\.(?:py|sql|ya?ml|toml|json|md|sh|cfg|ini|txt|html|js|ts|conf)\b"  # a file name
    r"|\b\d+(?:\.\d+)?\s?(?:%|ms|s|sec|seconds?|m|min|minutes?|h|hours?|days?|weeks?|gb|gib|mb|mib|rps|qps|"
    r"req/s|tokens?|requests?|rows?|x)(?!\w)",  # a quantity with a unit
    re.I)
_MEASURABLE = re.compile(
    r"`[^`]+`|\d|<|>|≤|≥|\b(?:at least|at most|no more than|within|under|zero|none|identical|equal|p50|p95|p99)\b",
    re.I)
_DEPENDENCY = re.compile(
    r"\b(?:after|before|once|until|depends on|dependent on|blocked by|requires?|prerequisites?|only when|"
    r"steps? \d+|phase \d+)\b", re.I)


@dataclass(frozen=True)
class Requirement:
    id: str
    text: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    number: int | None
    text: str


@dataclass(frozen=True)
class Section:
    heading: str
    categories: frozenset[str]
    items: tuple[Item, ...]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class PlanScore:
    dimensions: dict[str, float]  # in DIMENSIONS order
    overall: float
    missing: tuple[str, ...]  # ids of the requirements the plan does not address
    counts: dict[str, int]


def _categories(heading: str) -> frozenset[str]:
    found = frozenset(name for name, pattern in _CATEGORY.items() if pattern.search(heading))
    if not found and _STEPS.search(heading):
        return frozenset({"steps"})
    return found


def _heading_of(line: str) -> str | None:
    for pattern in (_HEADING, _BOLD_LINE):
        match = pattern.match(line)
        if match:
            return match.group("text").strip()
    match = _COLON_LINE.match(line)
    if match and not _ITEM.match(line):
        return match.group("text").strip()
    return None


def parse_sections(text: str) -> tuple[Section, ...]:
    """The plan's sections in order; lines before the first heading form a section with no heading."""
    sections: list[Section] = []
    heading = ""
    lines: list[str] = []
    items: list[Item] = []

    def close() -> None:
        if heading or lines:
            sections.append(Section(heading, _categories(heading), tuple(items), tuple(lines)))

    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        found = _heading_of(line)
        if found is not None:
            close()
            heading, lines, items = found, [], []
            continue
        if not line.strip():
            continue
        lines.append(line)
        item = _ITEM.match(line)
        if item:
            number = item.group("number")
            items.append(Item(int(number) if number else None, item.group("text").strip()))
        elif items and line[:1].isspace():
            last = items[-1]
            items[-1] = Item(last.number, f"{last.text} {line.strip()}")
    close()
    return tuple(sections)


def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(term.lower()) + r"(?:s|es)?(?!\w)")


def _ratio(count: int, full: int) -> float:
    return min(1.0, count / full)


def _in_sequence(numbers: list[int]) -> float:
    """The share of consecutive numbered steps that follow on (a list may restart at 1)."""
    if len(numbers) < MIN_NUMBERED:
        return 0.0
    pairs = list(zip(numbers, numbers[1:], strict=False))
    return sum(1 for a, b in pairs if b == a + 1 or b == 1) / len(pairs)


def grade_plan(text: str, requirements: tuple[Requirement, ...]) -> PlanScore:
    sections = parse_sections(text)
    lowered = text.lower()

    missing = tuple(r.id for r in requirements if not any(_term_pattern(t).search(lowered) for t in r.terms))
    coverage = (len(requirements) - len(missing)) / len(requirements) if requirements else 1.0

    steps = [item for s in sections if "steps" in s.categories for item in s.items]
    if not steps:  # no steps heading: the numbered items outside risks, rollback and checks
        steps = [item for s in sections if not s.categories for item in s.items if item.number is not None]
    concrete = sum(1 for item in steps if _CONCRETE.search(item.text))
    concreteness = (concrete / len(steps)) * _ratio(len(steps), MIN_STEPS) if steps else 0.0

    risks = rollbacks = 0
    for s in sections:
        if "rollback" in s.categories and "risk" in s.categories:
            back = sum(1 for item in s.items if _ROLLBACK_MENTION.search(item.text))
            rollbacks += back
            risks += len(s.items) - back
        elif "rollback" in s.categories:
            rollbacks += len(s.items)
        elif "risk" in s.categories:
            risks += len(s.items)
    if rollbacks:
        rollback_part = _ratio(rollbacks, ROLLBACK_ITEMS)
    else:
        rollback_part = ROLLBACK_MENTION if _ROLLBACK_MENTION.search(text) else 0.0
    risk = 0.5 * _ratio(risks, RISK_ITEMS) + 0.5 * rollback_part

    checks = [item for s in sections if "verification" in s.categories for item in s.items]
    measurable = sum(1 for item in checks if _MEASURABLE.search(item.text))
    verification = 0.5 * _ratio(len(checks), CHECK_ITEMS) + 0.5 * _ratio(measurable, MEASURABLE_ITEMS)

    numbers = [item.number for item in steps if item.number is not None]
    references = sum(len(_DEPENDENCY.findall(item.text)) for item in steps)
    sequencing = 0.5 * _in_sequence(numbers) + 0.5 * _ratio(references, DEPENDENCY_REFS)

    values = (coverage, concreteness, risk, verification, sequencing)
    dimensions = {name: round(value, PLACES) for name, value in zip(DIMENSIONS, values, strict=True)}
    overall = round(math.fsum(dimensions.values()) / len(DIMENSIONS), PLACES)
    counts = {"steps": len(steps), "concrete_steps": concrete, "risks": risks, "rollback_items": rollbacks,
              "checks": len(checks), "measurable_checks": measurable, "numbered_steps": len(numbers),
              "dependency_refs": references}
    return PlanScore(dimensions, overall, missing, counts)
