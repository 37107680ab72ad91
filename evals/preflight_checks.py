"""The preflight checks: what each asks a model, and how its answer is judged. Pure: no HTTP here.

* needle: a passphrase hidden at a given depth of a haystack of a given length in characters
  (the runner sizes it in tokens with the serve's own tokenizer, evals/serve_tokens.py); the
  answer must contain it (long context, the large-prefill path);
* tools: a batch of requests sharing one long prefix (system prompt and tool catalog), each asking
  for a different city; each answer must call the named tool with valid JSON arguments naming it;
* json: a reply constrained by a JSON schema; it must parse and carry the required keys, typed;
* coding: a small function in a fenced Python block; it must parse and define the function with
  the right arguments (parsed with ``ast``, never executed: model output is untrusted code).
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from evals.client import Answer, parsed_arguments
from routing.models import WorkClass

NEEDLE_MAX_TOKENS = 32  # the passphrase and little else
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    "A river runs through the valley, and the mill turns slowly in the evening light. "
)
CITIES = ("Paris", "Lagos", "Osaka", "Lima", "Oslo", "Quito", "Hanoi", "Perth")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
TOOLS_PREFIX = (
    "You are the operations assistant of a logistics company. You answer questions about shipments, "
    "weather at depots and schedules. When a question needs live data, call the matching tool instead of "
    "guessing. " * 8
)
RELEASE_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                   "stable": {"type": "boolean"}, "downloads": {"type": "integer"}},
                  "required": ["name", "version", "stable", "downloads"], "additionalProperties": False}
FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Probe:
    """One request of a check, and what its answer must show."""

    check: str
    name: str
    work_class: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    expect: dict[str, Any] = field(default_factory=dict)
    needs_tools: bool = False
    # Why the check cannot run on this serve (its prompt does not fit the context): recorded as a
    # harness error, never sent.
    unrunnable: str = ""
    sizing: dict[str, Any] = field(default_factory=dict)  # how its prompt was sized, for the result's details


@dataclass(frozen=True)
class Judgement:
    passed: bool
    reason: str


def needle(context_tokens: int, depth: float, seed: int, chars: int) -> Probe:
    """The needle check named for ``context_tokens``, its haystack ``chars`` characters long."""
    rng = random.Random(seed)
    secret = f"{rng.choice(['amber', 'cobalt', 'juniper', 'saffron', 'tundra'])}-{rng.randrange(1000, 9999)}"
    size = max(200, chars)
    hay = (FILLER * (size // len(FILLER) + 1))[:size]
    at = hay.rfind(". ", 0, int(size * depth)) + 2 if size * depth > 2 else 0
    text = f"{hay[:at]}The secret passphrase is {secret}. {hay[at:]}"
    question = "What is the secret passphrase in the text above? Answer with the passphrase only."
    return Probe("needle", f"needle {context_tokens} tokens @ {depth:.0%}", WorkClass.LONG_CONTEXT,
                 [{"role": "user", "content": f"{text}\n\n{question}"}],
                 {"max_tokens": NEEDLE_MAX_TOKENS, "temperature": 0},
                 {"secret": secret})


def tool_batch(size: int) -> list[Probe]:
    probes = []
    for index in range(size):
        city = CITIES[index % len(CITIES)]
        probes.append(Probe(
            "tools", f"tool call #{index + 1} ({city})", WorkClass.BOUNDED_EDIT,
            [{"role": "system", "content": TOOLS_PREFIX},
             {"role": "user", "content": f"What is the weather at our depot in {city} right now?"}],
            {"tools": [WEATHER_TOOL], "tool_choice": "auto", "max_tokens": 128, "temperature": 0},
            {"tool": "get_weather", "city": city}, needs_tools=True))
    return probes


def structured_json() -> Probe:
    return Probe("json", "structured JSON", WorkClass.CHAT,
                 [{"role": "user", "content": "Describe the Django 5.2 release as JSON: its name, version, whether "
                                              "it is stable, and an estimate of its downloads."}],
                 {"response_format": {"type": "json_schema", "json_schema": {"name": "release",
                                                                             "schema": RELEASE_SCHEMA}},
                  "max_tokens": 256, "temperature": 0},
                 {"schema": RELEASE_SCHEMA})


def coding() -> Probe:
    return Probe("coding", "coding smoke test", WorkClass.BOUNDED_EDIT,
                 [{"role": "user", "content": "Write a Python function `clamp(value, low, high)` that returns value "
                                              "limited to the range low..high. Reply with one ```python code block."}],
                 {"max_tokens": 256, "temperature": 0}, {"function": "clamp", "arguments": 3})


def judge(probe: Probe, answer: Answer) -> Judgement:
    if probe.check == "needle":
        found = probe.expect["secret"] in answer.text
        return Judgement(found, "passphrase found" if found else "passphrase missing from the answer")
    if probe.check == "tools":
        return _judge_tool(probe, answer)
    if probe.check == "json":
        return _judge_json(probe, answer)
    if probe.check == "coding":
        return _judge_code(probe, answer)
    raise ValueError(f"unknown check {probe.check!r}")


def _judge_tool(probe: Probe, answer: Answer) -> Judgement:
    if not answer.tool_calls:
        return Judgement(False, "no tool call")
    call = answer.tool_calls[0]
    name = (call.get("function") or {}).get("name")
    if name != probe.expect["tool"]:
        return Judgement(False, f"called {name!r}, not {probe.expect['tool']!r}")
    arguments = parsed_arguments(call)
    if arguments is None:
        return Judgement(False, "arguments are not a JSON object")
    city = str(arguments.get("city", ""))
    if probe.expect["city"].lower() not in city.lower():
        return Judgement(False, f"city {city!r}, expected {probe.expect['city']!r}")
    return Judgement(True, "tool, arguments and city correct")


def _judge_json(probe: Probe, answer: Answer) -> Judgement:
    text = answer.text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return Judgement(False, "not JSON")
    if not isinstance(value, dict):
        return Judgement(False, "not a JSON object")
    schema = probe.expect["schema"]
    types = {"string": str, "boolean": bool, "integer": int, "number": (int, float), "object": dict, "array": list}
    for key in schema["required"]:
        if key not in value:
            return Judgement(False, f"missing key {key!r}")
        wanted = schema["properties"][key]["type"]
        if not isinstance(value[key], types[wanted]) or (wanted == "integer" and isinstance(value[key], bool)):
            return Judgement(False, f"{key!r} is not a {wanted}")
    return Judgement(True, "valid against the schema's keys and types")


def _judge_code(probe: Probe, answer: Answer) -> Judgement:
    blocks = FENCE.findall(answer.text)
    if not blocks:
        return Judgement(False, "no fenced Python block")
    try:
        tree = ast.parse(blocks[0])
    except SyntaxError as exc:
        return Judgement(False, f"does not parse: {exc.msg} (line {exc.lineno})")
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == probe.expect["function"]:
            if len(node.args.args) != probe.expect["arguments"]:
                return Judgement(False, f"{node.name} takes {len(node.args.args)} arguments")
            if not any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(node)):
                return Judgement(False, f"{node.name} returns nothing")
            return Judgement(True, f"defines {node.name} with {probe.expect['arguments']} arguments")
    return Judgement(False, f"no function named {probe.expect['function']}")
