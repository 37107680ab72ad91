"""``runeval preflight``: is this serve correct enough to route to? A pass/fail gate.

Needle in a haystack at ``--needle-ctx`` tokens (several depths), tool calls over a shared-prefix
batch sent at once, structured JSON output, a coding smoke test (``evals/preflight_checks.py``).
A serve that does not call tools (``supports_tools`` off) has its tool checks skipped, not failed.
A blank answer cut off by ``max_tokens`` is recorded as reasoning budget exhausted. The gate
passes when the share of passed checks among those that ran reaches ``--min-pass`` (default: all).
Each passed or failed check is a verifier grade of its work class for the serve.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.management.base import CommandParser

from evals.client import Answer, Client, TargetRefused
from evals.errors import BadParameters, BadTarget
from evals.models import EvalResult
from evals.parameters import from_options, number, reject_unknown, whole
from evals.preflight_checks import Probe, coding, judge, needle, structured_json, tool_batch
from evals.runs import RunContext, RunOutcome
from evals.targets import check_reachable
from serves.models import Serve

CHECKS = ("needle", "tools", "json", "coding")
PARAMETERS = ("needle_ctx", "needle_depths", "tool_batch", "checks", "min_pass")
DEFAULT_NEEDLE_CTX = 2000
Verdict = EvalResult.Verdict


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--needle-ctx", type=int, metavar="TOKENS",
                        help=f"haystack length (default: {DEFAULT_NEEDLE_CTX}, or 3/4 of the serve's context limit)")
    parser.add_argument("--needle-depth", type=float, action="append", dest="needle_depths", metavar="D",
                        help="where the needle sits, 0..1 (repeatable; default 0.1, 0.5, 0.9)")
    parser.add_argument("--tool-batch", type=int, metavar="N", help="tool-call requests sent at once (default 4)")
    parser.add_argument("--check", action="append", dest="checks", choices=CHECKS, help="run only these checks")
    parser.add_argument("--min-pass", type=float, metavar="R", help="gate: share of checks that must pass (1.0)")


def parameters_from_options(options: dict[str, Any]) -> dict[str, Any]:
    return from_options(options, PARAMETERS)


def clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    reject_unknown("preflight", parameters, PARAMETERS)
    clean: dict[str, Any] = {}
    for name, low, high in (("needle_ctx", 64, 2_000_000), ("tool_batch", 1, 64)):
        if parameters.get(name) is not None:
            clean[name] = whole(parameters[name], name, low, high)
    depths = parameters.get("needle_depths")
    if depths is not None:
        if not isinstance(depths, list) or not depths or not all(
                isinstance(d, int | float) and not isinstance(d, bool) and 0 <= d <= 1 for d in depths):
            raise BadParameters("needle_depths is a list of numbers from 0 to 1")
        clean["needle_depths"] = [float(d) for d in depths]
    checks = parameters.get("checks")
    if checks is not None:
        if not isinstance(checks, list) or not checks or not set(checks) <= set(CHECKS):
            raise BadParameters(f"checks is a list drawn from {', '.join(CHECKS)}")
        clean["checks"] = [c for c in CHECKS if c in checks]
    if parameters.get("min_pass") is not None:
        clean["min_pass"] = number(parameters["min_pass"], "min_pass", 0, 1)
    return clean


def probes_for(parameters: dict[str, Any], serve: Serve | None) -> list[Probe]:
    checks = parameters.get("checks") or list(CHECKS)
    context = parameters.get("needle_ctx")
    if context is None:
        limit = serve.context_limit if serve is not None else None
        context = min(DEFAULT_NEEDLE_CTX, int(limit * 0.75)) if limit else DEFAULT_NEEDLE_CTX
    probes: list[Probe] = []
    if "needle" in checks:
        probes += [needle(context, depth, seed=index)
                   for index, depth in enumerate(parameters.get("needle_depths") or [0.1, 0.5, 0.9])]
    if "tools" in checks:
        probes += tool_batch(parameters.get("tool_batch", 4))
    if "json" in checks:
        probes.append(structured_json())
    if "coding" in checks:
        probes.append(coding())
    return probes


def execute(ctx: RunContext) -> RunOutcome:
    if ctx.target is None:
        raise BadTarget("preflight needs a target: --serve NAME, or --base-url URL with --model M")
    parameters = clean_parameters(ctx.parameters)
    serve = Serve.objects.filter(pk=ctx.target.serve_id).first() if ctx.target.serve_id else None
    check_reachable(ctx.target)
    probes = probes_for(parameters, serve)
    tools_supported = serve is None or serve.supports_tools
    ctx.set_total(len(probes))
    tallies: dict[str, dict[str, int]] = {}
    with Client(ctx.target) as client:
        for group in _groups(probes):
            ctx.check_cancelled()
            ctx.note = group[0].name
            if group[0].needs_tools and not tools_supported:
                answers: list[Answer | Exception | None] = [None] * len(group)
            elif len(group) > 1:  # the shared-prefix batch goes out at once
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    answers = list(pool.map(lambda p: _ask(client, p), group))
            else:
                answers = [_ask(client, group[0])]
            for probe, answer in zip(group, answers, strict=True):
                verdict = _record(ctx, probe, answer)
                tally = tallies.setdefault(probe.check, {})
                tally[verdict] = tally.get(verdict, 0) + 1
            ctx.advance(len(group))
    ran = sum(count for tally in tallies.values() for verdict, count in tally.items()
              if verdict in (Verdict.PASS, Verdict.FAIL, Verdict.ERROR))
    passed = sum(tally.get(Verdict.PASS, 0) for tally in tallies.values())
    rate = passed / ran if ran else 0.0
    floor = parameters.get("min_pass", 1.0)
    gate = ran > 0 and rate >= floor
    lines = [f"{check}: " + ", ".join(f"{count} {verdict}" for verdict, count in sorted(tally.items()))
             for check, tally in tallies.items()]
    lines.append(f"gate: {passed}/{ran} checks passed ({rate:.0%}, floor {floor:.0%}) -> "
                 f"{'PASS' if gate else 'FAIL'}")
    return RunOutcome(summary={"checks": tallies, "passed": passed, "ran": ran, "pass_rate": round(rate, 4),
                               "min_pass": floor, "lines": lines}, gate_passed=gate)


def _groups(probes: list[Probe]) -> list[list[Probe]]:
    """Consecutive probes of the tools check travel together (the batch); every other probe alone."""
    groups: list[list[Probe]] = []
    for probe in probes:
        if groups and probe.check == "tools" and groups[-1][0].check == "tools":
            groups[-1].append(probe)
        else:
            groups.append([probe])
    return groups


def _ask(client: Client, probe: Probe) -> Answer | Exception:
    try:
        return client.chat(probe.messages, **probe.params)
    except TargetRefused as exc:  # the serve's own refusal (e.g. context too long) is this check's failure
        return exc


def _record(ctx: RunContext, probe: Probe, answer: Answer | Exception | None) -> str:
    base = {"name": probe.name, "work_class": probe.work_class}
    if answer is None:
        ctx.record(verdict=Verdict.SKIPPED, details={"check": probe.check, "reason": "the serve does not call tools"},
                   **base)
        return Verdict.SKIPPED
    if isinstance(answer, Exception):
        result = ctx.record(verdict=Verdict.ERROR, error=str(answer)[:2000], score=0.0,
                            details={"check": probe.check}, **base)
        ctx.grade(result, score=0.0, grader="preflight", note=f"{probe.check}: the serve refused: {answer}"[:500])
        return Verdict.ERROR
    output = answer.text if not answer.tool_calls else json.dumps(answer.tool_calls)[:5000]
    fields = {"output": output[:20000], "latency_s": answer.latency_s, "prompt_tokens": answer.prompt_tokens,
              "completion_tokens": answer.completion_tokens, "finish_reason": answer.finish_reason[:32]}
    if answer.budget_exhausted:
        ctx.record(verdict=Verdict.BUDGET_EXHAUSTED, details={"check": probe.check}, **base, **fields)
        return Verdict.BUDGET_EXHAUSTED
    judgement = judge(probe, answer)
    verdict = Verdict.PASS if judgement.passed else Verdict.FAIL
    result = ctx.record(verdict=verdict, score=1.0 if judgement.passed else 0.0,
                        details={"check": probe.check, "reason": judgement.reason}, **base, **fields)
    ctx.grade(result, score=1.0 if judgement.passed else 0.0, grader="preflight",
              note=f"{probe.check}: {judgement.reason}")
    return verdict
