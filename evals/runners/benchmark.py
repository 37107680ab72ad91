"""``runeval benchmark``: is this serve fast enough, and does it keep answering well?

Capacity: streamed chat completions at each ``--concurrency`` level and each Poisson ``--rate``
(``evals/load_generator.py``: TTFT, TPOT, ITL and end-to-end latency percentiles, request and output token
throughput, as ``vllm bench serve`` defines them). Quality: a few questions with known answers,
asked ``--repeats`` times; the pass rate must reach ``--min-pass-rate``. A blank answer cut off by
``max_tokens`` is recorded as reasoning budget exhausted and left out of the pass rate, not counted
as wrong. Every request is a result row (latency histograms on the run's page); quality answers
are verifier grades of the serve's ``chat`` cell.

``--replay FILE`` replays a recorded request file (``evals/replay.py``: JSONL of OpenAI request
bodies) for capacity instead of the one prompt: at its recorded pace when every line has a time
(``ts`` or ``at``) and no ``--rate``/``--concurrency`` is given, else at each chosen ``--rate``
(Poisson) and ``--concurrency``. Every level sends the file's requests once, in order.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser

from evals.client import Client, TargetRefused, headers_for
from evals.errors import BadParameters, BadTarget
from evals.load_generator import Level, RequestRecord, run_level, summarize
from evals.models import EvalResult
from evals.parameters import from_options, number, reject_unknown, whole
from evals.replay import Replay, load_replay
from evals.runs import RunContext, RunOutcome
from evals.targets import check_reachable
from routing.models import WorkClass

PARAMETERS = ("concurrency", "rates", "requests", "max_tokens", "prompt", "ignore_eos", "repeats",
              "min_pass_rate", "temperature", "parts", "min_output_throughput", "replay")
PARTS = ("capacity", "quality")
DEFAULT_PROMPT = "Explain in a short paragraph what a load balancer does and why services use one."
QUESTIONS = (
    ("What is 17 + 25? Answer with the number only.", "42"),
    ("What is the capital of France? Answer with one word.", "paris"),
    ("Write the word 'anvil' backwards. Answer with that word only.", "livna"),
)
POLL_SECONDS = 0.2
Verdict = EvalResult.Verdict


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--concurrency", type=int, action="append", metavar="N",
                        help="closed-loop concurrency level (repeatable; default 1 and 4)")
    parser.add_argument("--rate", type=float, action="append", dest="rates", metavar="R",
                        help="Poisson arrival rate in requests/s (repeatable)")
    parser.add_argument("--requests", type=int, metavar="N", help="requests per level (default 16)")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per capacity request (64)")
    parser.add_argument("--ignore-eos", action="store_true", default=None,
                        help="ask the serve to generate exactly --max-tokens (vLLM, SGLang, the HRM worker)")
    parser.add_argument("--repeats", type=int, metavar="N", help="times each quality question is asked (3)")
    parser.add_argument("--min-pass-rate", type=float, metavar="R", help="gate: quality pass-rate floor (0.8)")
    parser.add_argument("--min-output-throughput", type=float, metavar="TOK_S",
                        help="gate: every level's output tokens/s must reach this")
    parser.add_argument("--part", action="append", dest="parts", choices=PARTS, help="run only this part")
    parser.add_argument("--replay", type=Path, metavar="FILE",
                        help="capacity from a recorded request file (JSONL of request bodies, optional ts/at): at "
                             "its recorded pace, or at each --rate / --concurrency given")


def parameters_from_options(options: dict[str, Any]) -> dict[str, Any]:
    return from_options(options, PARAMETERS)


def clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    reject_unknown("benchmark", parameters, PARAMETERS)
    p = parameters
    replay = p.get("replay")
    if replay is not None and (not isinstance(replay, str) or not replay):
        raise BadParameters("replay is the path of a request file")
    # A replay keeps its recorded pace unless a rate or a concurrency is asked for.
    concurrency = p.get("concurrency", [] if replay else [1, 4])
    clean: dict[str, Any] = {
        "concurrency": [whole(c, "concurrency", 1, 1024) for c in _list(concurrency, "concurrency")],
        "rates": [number(r, "rates", 0.01, 10_000) for r in _list(p.get("rates", []), "rates")],
        "requests": whole(p.get("requests", 16), "requests", 1, 100_000),
        "max_tokens": whole(p.get("max_tokens", 64), "max_tokens", 1, 1_000_000),
        "repeats": whole(p.get("repeats", 3), "repeats", 1, 1000),
        "min_pass_rate": number(p.get("min_pass_rate", 0.8), "min_pass_rate", 0, 1),
        "temperature": number(p.get("temperature", 0.7), "temperature", 0, 2),
        "prompt": p.get("prompt", DEFAULT_PROMPT),
        "ignore_eos": bool(p.get("ignore_eos", False)),
        "parts": [part for part in PARTS if part in _list(p.get("parts", list(PARTS)), "parts")],
    }
    if not isinstance(clean["prompt"], str) or not clean["prompt"]:
        raise BadParameters("prompt is a non-empty string")
    if set(_list(p.get("parts", list(PARTS)), "parts")) - set(PARTS) or not clean["parts"]:
        raise BadParameters(f"parts are drawn from {', '.join(PARTS)}")
    if replay is not None:
        replay = str(Path(replay).resolve())  # the same file whichever directory the run is started from
        recorded = load_replay(replay)  # refused now, naming the line, rather than when a worker runs it
        clean["replay"] = replay
        if recorded.offsets is None and not clean["concurrency"] and not clean["rates"]:
            raise BadParameters(f"replay file {replay} has no recorded times (ts or at)",
                                hint="choose a pace: --rate R or --concurrency N")
    elif "capacity" in clean["parts"] and not clean["concurrency"] and not clean["rates"]:
        raise BadParameters("capacity needs at least one concurrency level or rate")
    if p.get("min_output_throughput") is not None:
        clean["min_output_throughput"] = number(p["min_output_throughput"], "min_output_throughput", 0, 1e9)
    return clean


def _list(value: Any, name: str = "value") -> list[Any]:
    if not isinstance(value, list):
        raise BadParameters(f"{name} is a list")
    return value


def execute(ctx: RunContext) -> RunOutcome:
    if ctx.target is None:
        raise BadTarget("benchmark needs a target: --serve NAME, or --base-url URL with --model M")
    p = clean_parameters(ctx.parameters)
    check_reachable(ctx.target)
    replay = load_replay(p["replay"]) if p.get("replay") and "capacity" in p["parts"] else None
    levels = _levels(p, replay) if "capacity" in p["parts"] else []
    quality = [(q, a) for q, a in QUESTIONS for _ in range(p["repeats"])] if "quality" in p["parts"] else []
    ctx.set_total(sum(level.requests for level in levels) + len(quality))
    summary: dict[str, Any] = {"lines": []}
    if replay is not None:
        summary["replay"] = {"file": replay.path, "sha256": replay.sha256, "bytes": replay.size,
                             "requests": len(replay.requests), "recorded_span_s": replay.recorded_span}
        summary["lines"].append(f"replay: {len(replay.requests)} requests from {replay.path}"
                                + (f" recorded over {replay.recorded_span:.1f} s" if replay.offsets else ""))
    gate = True
    if levels:
        summary["capacity"] = [_capacity(ctx, level, p, index, replay) for index, level in enumerate(levels)]
        for level in summary["capacity"]:
            ttft, tpot = level["ttft_ms"].get("p50", float("nan")), level["tpot_ms"].get("p50", float("nan"))
            summary["lines"].append(
                f"{level['label']}: {level['completed']}/{level['requests']} ok, "
                f"{level['request_throughput']:.2f} req/s, {level['output_throughput']:.1f} tok/s, "
                f"TTFT p50 {ttft:.1f} ms, TPOT p50 {tpot:.2f} ms")
            if level["failed"]:
                gate = False
        floor = p.get("min_output_throughput")
        if floor is not None and any(level["output_throughput"] < floor for level in summary["capacity"]):
            gate = False
            summary["lines"].append(f"capacity gate: a level is under {floor:g} output tokens/s")
    if quality:
        summary["quality"] = _quality(ctx, quality, p)
        q = summary["quality"]
        summary["lines"].append(f"quality: {q['passed']}/{q['answered']} passed ({q['pass_rate']:.0%}, floor "
                                f"{p['min_pass_rate']:.0%}); {q['budget_exhausted']} reasoning budget exhausted; "
                                f"{q['errors']} errors")
        gate = gate and q["answered"] > 0 and q["pass_rate"] >= p["min_pass_rate"]
    summary["lines"].append(f"gate: {'PASS' if gate else 'FAIL'}")
    return RunOutcome(summary=summary, gate_passed=gate)


def _levels(p: dict[str, Any], replay: Replay | None) -> list[Level]:
    if replay is None:
        return ([Level(f"c={c}", p["requests"], concurrency=c) for c in p["concurrency"]]
                + [Level(f"rate={r:g}/s", p["requests"], rate=r) for r in p["rates"]])
    count = len(replay.requests)
    if not p["concurrency"] and not p["rates"]:
        return [Level("replay (recorded pace)", count, offsets=replay.offsets)]
    return ([Level(f"replay c={c}", count, concurrency=c) for c in p["concurrency"]]
            + [Level(f"replay rate={r:g}/s", count, rate=r) for r in p["rates"]])


def _replayed(replay: Replay, base_url: str, model: str, ignore_eos: bool) -> list[tuple[str, dict[str, Any]]]:
    """The recorded bodies as sent: the target's model, streamed with usage (what the metrics need)."""
    sent = []
    for endpoint, body in replay.requests:
        body = {**body, "model": model, "stream": True,
                "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        if ignore_eos:
            body["ignore_eos"] = True
        sent.append((f"{base_url}{endpoint}", body))
    return sent


def _capacity(ctx: RunContext, level: Level, p: dict[str, Any], index: int,
              replay: Replay | None = None) -> dict[str, Any]:
    target = ctx.target
    assert target is not None
    body: dict[str, Any] = {"model": target.model, "stream": True, "stream_options": {"include_usage": True},
                            "max_tokens": p["max_tokens"], "temperature": 0,
                            "messages": [{"role": "user", "content": p["prompt"]}]}
    if p["ignore_eos"]:
        body["ignore_eos"] = True
    requests = _replayed(replay, target.base_url, target.model, p["ignore_eos"]) if replay is not None else None
    finished: list[RequestRecord] = []
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["records"], outcome["duration"] = run_level(
                f"{target.base_url}/chat/completions", body, headers_for(target), level, seed=index, stop=stop,
                on_done=finished.append, requests=requests)
        except BaseException as exc:  # handed to the runner's thread
            outcome["error"] = exc

    ctx.note = level.label
    loader = threading.Thread(target=drive, name=f"load-{level.label}", daemon=True)
    loader.start()
    reported = 0
    try:
        while loader.is_alive():
            loader.join(POLL_SECONDS)
            if len(finished) > reported:
                ctx.advance(len(finished) - reported)
                reported = len(finished)
            ctx.check_cancelled()
    finally:
        stop.set()  # a cancellation (or any error here) stops the requests in flight
        loader.join(30)
    if "error" in outcome:
        raise outcome["error"]
    records, duration = outcome["records"], outcome["duration"]
    ctx.advance(len(records) - reported)
    for index, record in enumerate(records, start=1):
        ctx.record(name=f"{level.label} #{index}", work_class=WorkClass.CHAT,
                   verdict=Verdict.PASS if record.ok else Verdict.ERROR, latency_s=record.e2el, ttft_s=record.ttft,
                   completion_tokens=record.output_tokens or None, finish_reason=record.finish_reason[:32],
                   error=record.error[:2000], details={"level": level.label, "itl_s": [round(g, 6) for g in record.itl],
                                                       "tpot_s": record.tpot})
    return summarize(level, records, duration)


def _quality(ctx: RunContext, questions: list[tuple[str, str]], p: dict[str, Any]) -> dict[str, Any]:
    tally = {"passed": 0, "failed": 0, "budget_exhausted": 0, "errors": 0}
    with Client(ctx.target) as client:  # type: ignore[arg-type]
        for index, (question, expected) in enumerate(ctx.each(questions, label=lambda q: q[0][:60]), start=1):
            name = f"quality #{index}: {question[:80]}"
            try:
                answer = client.chat([{"role": "user", "content": question}], max_tokens=p["max_tokens"],
                                     temperature=p["temperature"], seed=index)
            except TargetRefused as exc:
                ctx.record(name=name, work_class=WorkClass.CHAT, verdict=Verdict.ERROR, error=str(exc)[:2000])
                tally["errors"] += 1
                continue
            fields = {"output": answer.text[:20000], "latency_s": answer.latency_s,
                      "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "finish_reason": answer.finish_reason[:32]}
            if answer.budget_exhausted:
                ctx.record(name=name, work_class=WorkClass.CHAT, verdict=Verdict.BUDGET_EXHAUSTED,
                           details={"expected": expected}, **fields)
                tally["budget_exhausted"] += 1
                continue
            passed = expected in answer.text.lower()
            result = ctx.record(name=name, work_class=WorkClass.CHAT, verdict=Verdict.PASS if passed else Verdict.FAIL,
                                score=1.0 if passed else 0.0, details={"expected": expected}, **fields)
            ctx.grade(result, score=1.0 if passed else 0.0, grader="benchmark-quality",
                      note=f"expected {expected!r}: {'found' if passed else 'not found'}")
            tally["passed" if passed else "failed"] += 1
    answered = tally["passed"] + tally["failed"]
    return {**tally, "answered": answered, "pass_rate": round(tally["passed"] / answered, 4) if answered else 0.0}
