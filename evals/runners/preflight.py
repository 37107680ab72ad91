"""``runeval preflight``: is this serve correct enough to route to? A pass/fail gate.

Needle in a haystack at ``--needle-ctx`` tokens (several depths), tool calls over a shared-prefix
batch sent at once, structured JSON output, a coding smoke test (``evals/preflight_checks.py``).
A serve that does not call tools (``supports_tools`` off) has its tool checks skipped, not failed.
A blank answer cut off by ``max_tokens`` is recorded as reasoning budget exhausted. The gate
passes when the share of passed checks among those that ran reaches ``--min-pass`` (default: all).
Each passed or failed check is a verifier grade of its work class for the serve.

The needle prompts are sized with the serve's own tokenizer where it has one
(``evals/serve_tokens.py``), else by a conservative estimate, and never past its context less
the answer's ``max_tokens``: a needle that cannot fit is not sent. A check that could not run
is a ``harness_error``, never a grade: a prompt that does not fit, a refusal (4xx) of the
request we made (too long by the serve's count, a parameter it does not take), our own
timeout, or a prompt the serve must have cut (its count, with ``max_tokens``, past its
context: our sizing and its tokenizer disagree). A 5xx is the serve failing: an ``error``,
which fails the gate but is not a quality grade (availability is the circuit breakers' business).
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from django.core.management.base import CommandParser

from evals.client import REQUEST_TIMEOUT, Answer, Client, TargetRefused, headers_for
from evals.errors import BadParameters, BadTarget, TargetUnavailable
from evals.models import EvalResult
from evals.parameters import from_options, number, reject_unknown, whole
from evals.preflight_checks import NEEDLE_MAX_TOKENS, Probe, coding, judge, needle, structured_json, tool_batch
from evals.runs import RunContext, RunOutcome
from evals.serve_tokens import TokenCounter, token_counter
from evals.targets import check_reachable
from serves.models import Serve

CHECKS = ("needle", "tools", "json", "coding")
PARAMETERS = ("needle_ctx", "needle_depths", "tool_batch", "checks", "min_pass", "timeout")
DEFAULT_NEEDLE_CTX = 2000
DEFAULT_NEEDLE_SHARE = 0.75  # of the context, when that is less than the default
SIZING_TRIES = 4  # tokenize, shrink, tokenize again: a haystack converges in two or three
Verdict = EvalResult.Verdict


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--needle-ctx", type=int, metavar="TOKENS",
                        help=f"prompt length in the serve's tokens (default: {DEFAULT_NEEDLE_CTX}, or 3/4 of the "
                             "serve's context limit); a length that does not fit is a harness error, not sent")
    parser.add_argument("--needle-depth", type=float, action="append", dest="needle_depths", metavar="D",
                        help="where the needle sits, 0..1 (repeatable; default 0.1, 0.5, 0.9)")
    parser.add_argument("--tool-batch", type=int, metavar="N", help="tool-call requests sent at once (default 4)")
    parser.add_argument("--check", action="append", dest="checks", choices=CHECKS, help="run only these checks")
    parser.add_argument("--min-pass", type=float, metavar="R", help="gate: share of checks that must pass (1.0)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"how long one check may wait for its answer (default {REQUEST_TIMEOUT.read:g}); "
                             "a check that waits longer is a harness error")


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
    if parameters.get("timeout") is not None:
        clean["timeout"] = number(parameters["timeout"], "timeout", 1, 3600)
    return clean


@dataclass(frozen=True)
class HarnessFault:
    """Why a check could not run: the harness's fault, never the serve's grade."""

    kind: str  # does-not-fit | refused | timeout | tokenizer-mismatch
    reason: str


def needle_tokens(parameters: dict[str, Any], limit: int | None) -> int:
    """The needle prompt's length in tokens: as asked, else the default, held to 3/4 of a smaller context."""
    asked = parameters.get("needle_ctx")
    if asked is not None:
        return int(asked)
    return min(DEFAULT_NEEDLE_CTX, int(limit * DEFAULT_NEEDLE_SHARE)) if limit else DEFAULT_NEEDLE_CTX


def sized_needles(parameters: dict[str, Any], counter: TokenCounter) -> list[Probe]:
    """The needle probes, each sized by ``counter`` to its length in tokens, never past the context.

    A length that cannot fit (the context, less ``max_tokens``) makes probes that are not sent.
    """
    tokens = needle_tokens(parameters, counter.context_limit)
    depths = parameters.get("needle_depths") or [0.1, 0.5, 0.9]
    limit = counter.context_limit
    room = limit - NEEDLE_MAX_TOKENS if limit else None
    if room is not None and tokens > room:
        reason = (f"a needle prompt of {tokens} tokens does not fit the context of {limit} tokens: with "
                  f"{NEEDLE_MAX_TOKENS} for the answer, at most {max(room, 0)} are left for the prompt")
        return [dataclasses.replace(needle(tokens, depth, seed=index, chars=0), unrunnable=reason,
                                    sizing={"tokens": tokens, "context_limit": limit, "sized_by": counter.method})
                for index, depth in enumerate(depths)]
    per_token = counter.chars_per_token()
    probes = []
    for index, depth in enumerate(depths):
        chars = int(tokens * per_token)
        probe = needle(tokens, depth, seed=index, chars=chars)
        counted = counter.count(probe.messages)
        for _ in range(SIZING_TRIES):
            if counted <= tokens:
                break
            chars = int(chars * tokens / counted * 0.98)
            probe = needle(tokens, depth, seed=index, chars=chars)
            counted = counter.count(probe.messages)
        sizing = {"tokens": counted, "context_limit": limit, "sized_by": counter.method}
        unrunnable = ""
        if room is not None and counted > room:
            unrunnable = (f"the needle prompt came to {counted} tokens by {counter.method}, more than the "
                          f"{room} the context of {limit} tokens leaves for it")
        probes.append(dataclasses.replace(probe, sizing=sizing, unrunnable=unrunnable))
    return probes


def probes_for(parameters: dict[str, Any], serve: Serve | None, counter: TokenCounter | None = None) -> list[Probe]:
    """The run's probes; needles sized by ``counter`` (default: an estimate against the serve's context)."""
    checks = parameters.get("checks") or list(CHECKS)
    probes: list[Probe] = []
    if "needle" in checks:
        counter = counter or TokenCounter("", context_limit=serve.effective_context_limit if serve else None)
        probes += sized_needles(parameters, counter)
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
    counter = None
    if "needle" in (parameters.get("checks") or CHECKS):
        counter = token_counter(ctx.target, serve, headers_for(ctx.target))
    probes = probes_for(parameters, serve, counter)
    tools_supported = serve is None or serve.supports_tools
    ctx.set_total(len(probes))
    tallies: dict[str, dict[str, int]] = {}
    timeout = httpx.Timeout(parameters["timeout"], connect=5.0) if "timeout" in parameters else REQUEST_TIMEOUT
    with Client(ctx.target, timeout=timeout) as client:
        for group in _groups(probes):
            ctx.check_cancelled()
            ctx.note = group[0].name
            if group[0].needs_tools and not tools_supported:
                answers: list[Answer | Exception | HarnessFault | None] = [None] * len(group)
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
    harness = sum(tally.get(Verdict.HARNESS_ERROR, 0) for tally in tallies.values())
    rate = passed / ran if ran else 0.0
    floor = parameters.get("min_pass", 1.0)
    gate = ran > 0 and rate >= floor
    lines = [f"{check}: " + ", ".join(f"{count} {verdict}" for verdict, count in sorted(tally.items()))
             for check, tally in tallies.items()]
    if counter is not None:
        lines.append(f"needles sized by {counter.method}; context limit: {counter.context_limit or 'unknown'}")
    if harness:
        lines.append(f"harness errors: {harness} checks could not run (not graded, not counted in the gate)")
    lines.append(f"gate: {passed}/{ran} checks passed ({rate:.0%}, floor {floor:.0%}) -> {'PASS' if gate else 'FAIL'}"
                 + ("" if ran else " (no check ran)"))
    return RunOutcome(summary={"checks": tallies, "passed": passed, "ran": ran, "harness_errors": harness,
                               "pass_rate": round(rate, 4), "min_pass": floor, "lines": lines}, gate_passed=gate)


def _groups(probes: list[Probe]) -> list[list[Probe]]:
    """Consecutive probes of the tools check travel together (the batch); every other probe alone."""
    groups: list[list[Probe]] = []
    for probe in probes:
        if groups and probe.check == "tools" and groups[-1][0].check == "tools":
            groups[-1].append(probe)
        else:
            groups.append([probe])
    return groups


def _ask(client: Client, probe: Probe) -> Answer | Exception | HarnessFault:
    if probe.unrunnable:
        return HarnessFault("does-not-fit", probe.unrunnable)
    try:
        return client.chat(probe.messages, **probe.params)
    except TargetRefused as exc:
        return _refused(probe, exc)
    except TargetUnavailable as exc:
        if isinstance(exc.__context__, httpx.TimeoutException):  # our own timeout: the check did not finish
            return HarnessFault("timeout", f"no answer within the harness's timeout: {exc}")
        raise  # the serve is down: the run fails, saying how to start it


def _refused(probe: Probe, exc: TargetRefused) -> TargetRefused | HarnessFault:
    """A 4xx is a refusal of the request we made (too long, a parameter the serve does not take): the
    harness's fault. A 5xx, or an answer that is not a completion, is the serve failing."""
    if exc.status is None or not 400 <= exc.status < 500:
        return exc
    reason = f"the serve refused the request: {exc}"
    if probe.sizing:
        reason += f" (the prompt was sized at {probe.sizing['tokens']} tokens by {probe.sizing['sized_by']})"
    return HarnessFault("refused", reason)


def _mismatch(probe: Probe, answer: Answer) -> str:
    """Why a needle's answer says the serve cut its prompt (our count and its tokenizer disagree), or ''."""
    limit = probe.sizing.get("context_limit")
    if not probe.sizing or not limit or answer.prompt_tokens is None:
        return ""
    if answer.prompt_tokens + NEEDLE_MAX_TOKENS <= limit:
        return ""
    return (f"tokenizer mismatch: the serve counted {answer.prompt_tokens} prompt tokens where "
            f"{probe.sizing['sized_by']} counted {probe.sizing['tokens']}; with max_tokens {NEEDLE_MAX_TOKENS} "
            f"that cannot fit the context of {limit} tokens, so the serve must have cut the prompt")


def _record(ctx: RunContext, probe: Probe, answer: Answer | Exception | HarnessFault | None) -> str:
    base = {"name": probe.name, "work_class": probe.work_class}
    details: dict[str, Any] = {"check": probe.check, **({"sizing": probe.sizing} if probe.sizing else {})}
    if answer is None:
        ctx.record(verdict=Verdict.SKIPPED, details={**details, "reason": "the serve does not call tools"}, **base)
        return Verdict.SKIPPED
    if isinstance(answer, HarnessFault):
        ctx.record(verdict=Verdict.HARNESS_ERROR, error=answer.reason[:2000],
                   details={**details, "harness": answer.kind, "reason": answer.reason}, **base)
        return Verdict.HARNESS_ERROR
    if isinstance(answer, Exception):  # the serve failed (5xx): the gate counts it; no quality grade
        ctx.record(verdict=Verdict.ERROR, error=str(answer)[:2000], details=details, **base)
        return Verdict.ERROR
    output = answer.text if not answer.tool_calls else json.dumps(answer.tool_calls)[:5000]
    fields = {"output": output[:20000], "latency_s": answer.latency_s, "prompt_tokens": answer.prompt_tokens,
              "completion_tokens": answer.completion_tokens, "finish_reason": answer.finish_reason[:32]}
    if answer.budget_exhausted:
        ctx.record(verdict=Verdict.BUDGET_EXHAUSTED, details=details, **base, **fields)
        return Verdict.BUDGET_EXHAUSTED
    judgement = judge(probe, answer)
    mismatch = "" if judgement.passed else _mismatch(probe, answer)
    if mismatch:
        ctx.record(verdict=Verdict.HARNESS_ERROR, error=mismatch,
                   details={**details, "harness": "tokenizer-mismatch", "reason": mismatch}, **base, **fields)
        return Verdict.HARNESS_ERROR
    verdict = Verdict.PASS if judgement.passed else Verdict.FAIL
    result = ctx.record(verdict=verdict, score=1.0 if judgement.passed else 0.0,
                        details={**details, "reason": judgement.reason}, **base, **fields)
    ctx.grade(result, score=1.0 if judgement.passed else 0.0, grader="preflight",
              note=f"{probe.check}: {judgement.reason}")
    return verdict
