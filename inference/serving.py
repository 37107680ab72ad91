"""One relayed request, from decision to answer: the candidates loop, the attempt budget, circuit breakers,
fallback, the commit rule of each attempt, and the decision record.

Consumers parse and render; this module serves. Per request: ask routing for a decision (ordered
candidates with verdicts), then try the candidates in order within ``ANVIL_ATTEMPT_BUDGET``
(``inference/attempt.py``), skipping serves whose circuit is open; the first attempt that commits
answers the client. Every request leaves one decision record (metadata only) in the decision log,
whatever happens to it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from django.conf import settings

from anvil_site import tracing
from anvil_site.metrics import SERVE_REQUESTS, SERVE_TTFT
from inference import calibration
from inference.admission import ADMISSION
from inference.attempt import AttemptOutcome, CommitRule, ResponseSink, run_attempt
from inference.auth import Principal
from inference.errors import (
    FrontDoorError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
    UpstreamFailed,
)
from inference.exchange import Exchange
from inference.inflight import in_flight
from inference.key_limits import limited
from inference.key_reach import reach_of, within
from inference.pool_wait import Reach, not_loaded, reaching
from inference.wire import Dialect, DialectError
from routing import web_state
from routing.breaker import SKIP
from routing.decide import AUTO_MODELS, PRESETS, Decision, decide
from routing.decision_log import DECISION_LOG
from routing.model_names import replicas_of
from routing.policy import Candidate
from routing.profile import VERIFY
from serves import model_states
from serves.catalog import ServeView, current_serves

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
PROFILE_PAGE = "/console/evals/profile/"


@dataclass
class DecisionRecordDraft:
    """The decision log's row for one request, filled in as the request goes (metadata only)."""

    id: str
    request_id: str
    endpoint: str
    api_key: str = ""
    requested_model: str = ""
    work_class: str = ""
    confident: bool = True
    notes: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    served_by: str = ""
    outcome: str = ""
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes_out: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    key_id: int | None = None
    spend_usd: float | None = None  # the answer's usage at its serve's prices
    fell_back: bool = False  # answered by a candidate other than the first (the traffic page's fallback rate)

    def priced(self, decision: Decision) -> None:
        """The spend of what was answered, at the answering serve's prices (None: no usage reported)."""
        serve = next((c.serve for c in decision.candidates if c.serve.name == self.served_by), None)
        if serve is not None and (self.prompt_tokens is not None or self.completion_tokens is not None):
            self.spend_usd = round(serve.cost(self.prompt_tokens, self.completion_tokens), 8)

    def span_attributes(self) -> dict[str, Any]:
        """What the request's trace span says of it (metadata only, as the record)."""
        found = {"anvil.decision": self.id, "anvil.model": self.requested_model, "anvil.work_class": self.work_class,
                 "anvil.served_by": self.served_by, "anvil.outcome": self.outcome, "anvil.fell_back": self.fell_back}
        found.update({name: value for name, value in (("http.response.status_code", self.status),
                                                      ("anvil.ttft_ms", self.ttft_ms)) if value is not None})
        return found

    def decided(self, decision: Decision) -> None:
        self.requested_model = decision.requested_model[:200]
        self.work_class, self.confident, self.notes = decision.work_class, decision.confident, list(decision.notes)
        self.candidates = ([{"serve": c.serve.name, "verdict": c.verdict} for c in decision.candidates]
                           + [{"serve": name, "verdict": "excluded", "why": why} for name, why in decision.excluded])

    def answered(self, final: AttemptOutcome, started: float) -> None:
        self.served_by = final.serve if final.committed else ""
        self.fell_back = bool(self.served_by and self.candidates and self.candidates[0]["serve"] != self.served_by)
        self.outcome, self.status = final.label, final.status
        self.prompt_tokens, self.completion_tokens = final.prompt_tokens, final.completion_tokens
        self.bytes_out = final.bytes_out
        if final.first_byte_at:
            self.ttft_ms = round((final.first_byte_at - started) * 1000, 3)

    def client_left(self, current: AttemptOutcome, started: float) -> None:
        """The client went away during ``current``: keep what it had been sent (serve, TTFT, bytes)."""
        self.attempts.append({**current.as_log(), "outcome": "client-gone"})
        if current.committed:
            self.served_by, self.bytes_out = current.serve, current.bytes_out
            self.prompt_tokens, self.completion_tokens = current.prompt_tokens, current.completion_tokens
        if current.first_byte_at:
            self.ttft_ms = round((current.first_byte_at - started) * 1000, 3)


@dataclass(frozen=True)
class RelayRequest:
    """What a consumer parsed: who asks, in which dialect, at which endpoint, with which body."""

    dialect: Dialect
    endpoint: str  # "chat" | "completions" | "messages"
    body: dict[str, Any]
    principal: Principal | None
    request_id: str
    client_headers: dict[bytes, bytes]
    upstream_dialects: frozenset[str] = frozenset({"openai", "anthropic"})
    started: float = field(default_factory=time.perf_counter)


def _loads(body: dict[str, Any], serves: tuple[ServeView, ...]) -> dict[str, int] | None:
    """Requests in flight at the serves that have replicas, when the request names a model (to balance them)."""
    model = body.get("model")
    if not isinstance(model, str) or model in AUTO_MODELS or model in PRESETS:
        return None
    seen: dict[str, list[str]] = {}
    for serve in serves:
        seen.setdefault(serve.model, []).append(serve.name)
    replicated = tuple(name for names in seen.values() if len(names) > 1 for name in names)
    return in_flight().loads(replicated) if replicated else None


async def make_decision(body: dict[str, Any], dialects: frozenset[str], principal: Principal | None = None
                        ) -> Decision:
    """Routing's decision over the serves the key may use (``inference/key_reach.py``)."""
    reach = reach_of(principal, body)
    every = await current_serves()
    serves, refused = within(every, reach)
    profile, rules = await web_state.PROFILE.get(), await web_state.RULES.get()
    decision = decide(body, serves, profile, rules, web_state.policy_config(), dialects=dialects,
                      loads=_loads(body, serves))
    if decision.unknown_model:  # perhaps a serve added a moment ago: look again before a 404
        every = await current_serves(force=True)
        serves, refused = within(every, reach)
        decision = decide(body, serves, profile, rules, web_state.policy_config(), dialects=dialects)
    elif decision.not_loaded and await model_states.mirror().catch_up():
        # Perhaps loaded a moment ago: the background check runs every half second, a 503 costs a retry.
        serves, refused = within(await current_serves(), reach)
        decision = decide(body, serves, profile, rules, web_state.policy_config(), dialects=dialects)
    if decision.unknown_model and refused:
        raise_if_out_of_reach(decision.requested_model, every, refused)
    if refused and not decision.named:  # auto and presets: say which serves the key could not use
        decision = replace(decision, excluded=(*decision.excluded, *refused.items()))
    return decision


def top_price(decision: Decision) -> float:
    """USD per token at the priciest serve that may answer: what a budget reserves for the request."""
    return max((max(c.serve.price_input, c.serve.price_output) / 1e6 for c in decision.candidates), default=0.0)


def raise_if_out_of_reach(name: str, every: tuple[ServeView, ...], refused: dict[str, str]) -> None:
    """A model that exists but that the key may not use: 403 ``model_not_allowed`` (not a 404)."""
    replicas = replicas_of(name, every)
    if replicas and all(serve.name in refused for serve in replicas):
        raise PermissionDenied(f"This API key may not use the model {name!r}: {refused[replicas[0].name]}. "
                               "An operator can widen the key's reach (manage.py apikey, or the admin).",
                               param="model", code="model_not_allowed")


def refusal(decision: Decision, serves_known: str, *, circuits_open: tuple[str, ...] = ()) -> FrontDoorError:
    """The error for a request no serve answered without trying: what stopped each candidate, said plainly.

    A serve the quality profile denied is named with its cell (serve or tier × work class, quality,
    samples), and never hidden behind another cause: when the serves left after the profile's
    filter all have open circuit breakers (``circuits_open``), the message says both.
    """
    if decision.unknown_model:
        return NotFound(f"The model {decision.requested_model!r} does not exist. Serves you can name: "
                        f"{serves_known}; or auto, or a preset (anvil/planning, anvil/chat, …).",
                        param="model", code="model_not_found")
    if decision.not_loaded:
        return not_loaded(decision.requested_model, decision.not_loaded, decision.not_loaded_error)
    if decision.modality_unsupported:
        # The code goes in the message too: Anthropic's error shape has no field for it.
        return InvalidRequest("This request carries images, and no serve that could answer it takes them "
                              "(modality_unsupported; a serve takes images when its modalities include \"image\"): "
                              + "; ".join(f"{name}: {why}" for name, why in decision.excluded),
                              param="messages", code="modality_unsupported")
    if decision.too_large:
        return PayloadTooLarge("No serve's context window fits this request: "
                               + "; ".join(why for _, why in decision.excluded))
    denied = "; ".join(why for _, why in decision.denied)
    review = (f"Review the quality profile at {PROFILE_PAGE}: revert a promotion there, or with "
              "`python manage.py profile revert ID`.")
    if circuits_open:
        # The breakers are why no attempt was made; the profile may be why nothing else was tried.
        message = (f"Every candidate serve is unavailable (open circuit breakers: {', '.join(circuits_open)}); "
                   "retry shortly.")
        if denied:
            message += f" Not tried: {denied}. {review}"
        return Unavailable(message, headers=[(b"retry-after", str(int(settings.ANVIL_BREAKER_COOLDOWN) or 1).encode())])
    if denied:
        named = {name for name, _ in decision.denied}
        others = "; ".join(f"{name}: {why}" for name, why in decision.excluded if name not in named)
        return Unavailable(f"No serve may answer this {decision.work_class} request: {denied}."
                           + (f" Also excluded: {others}." if others else "") + f" {review}", code="profile_denied")
    why = "; ".join(f"{name}: {reason}" for name, reason in decision.excluded) or "no enabled serve"
    return Unavailable(f"No serve may answer this {decision.work_class} request ({why}).")


def commit_rule(candidate: Candidate, stream: bool) -> tuple[CommitRule, bool]:
    """(how a stream commits, whether a whole answer is verified) for one candidate.

    A whole answer is verified whenever the verdict asks: the client waits for all of it anyway.
    A stream is held whole (strict) only where a measurement or an operator said allow-with-verify;
    an unmeasured serve gets the short prefix check, so a fresh install streams token by token; an
    allowed serve streams from its first byte. The serve's ``stream_verify`` overrides this for
    its streams: ``strict``, ``prefix`` or ``off``.
    """
    verify_whole = candidate.verdict == VERIFY
    if not stream:
        return CommitRule.OFF, verify_whole
    chosen = candidate.serve.stream_verify
    if chosen != "profile":
        return CommitRule(chosen), verify_whole
    if not verify_whole:
        return CommitRule.OFF, verify_whole
    return (CommitRule.STRICT if candidate.measured else CommitRule.PREFIX), verify_whole


async def serve_request(sink: ResponseSink, request: RelayRequest) -> None:
    """Answer ``request`` through ``sink``; a FrontDoorError means nothing was sent yet."""
    if not tracing.active():
        await _serve(sink, request, None)
        return
    attributes = {"anvil.endpoint": request.endpoint, "anvil.request_id": request.request_id,
                  "anvil.key": request.principal.name if request.principal else ""}
    with tracing.request_span("anvil.request", request.client_headers, attributes) as root:
        await _serve(sink, request, root)


async def _serve(sink: ResponseSink, request: RelayRequest, root: Any) -> None:
    started = request.started
    with tracing.span("anvil.decide"):
        decision = await make_decision(request.body, request.upstream_dialects, request.principal)
    sink.timing["decide"] = (time.perf_counter() - started) * 1000
    principal = request.principal
    record = DecisionRecordDraft(str(uuid.uuid4()), request.request_id, request.endpoint,
                                 api_key=f"{principal.name} ({principal.prefix})" if principal else "",
                                 key_id=principal.key_id if principal else None)
    record.decided(decision)
    sink.tags[b"x-anvil-decision"] = record.id.encode()
    sink.tags[b"x-anvil-work-class"] = decision.work_class.encode()
    try:
        if not decision.candidates:
            serves, _ = within(await current_serves(), reach_of(principal, request.body))  # only what it may use
            raise refusal(decision, ", ".join(s.name for s in serves) or "none")
        async with limited(principal, request.body, sink.tags, sink.timing, price=top_price(decision)) as ticket:
            try:
                with ADMISSION.admit(principal.key_id if principal else None):
                    final = await _attempts(sink, request, decision, record)
                record.answered(final, started)
            finally:
                record.priced(decision)
                if ticket is not None:
                    ticket.settle(record.prompt_tokens, record.completion_tokens, served=bool(record.served_by),
                                  cost=record.spend_usd)
    except FrontDoorError as error:
        record.outcome, record.status = "error", error.status_code
        raise
    except asyncio.CancelledError:
        record.outcome, record.status = "client-gone", CLIENT_CLOSED_REQUEST
        raise
    except Exception:
        record.outcome, record.status = "error", 500  # a bug: the consumer answers 500, the record stays
        raise
    finally:
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        DECISION_LOG.append(asdict(record))
        SERVE_REQUESTS.labels(record.served_by, record.outcome).inc()
        if record.ttft_ms is not None:
            SERVE_TTFT.labels(record.served_by).observe(record.ttft_ms / 1000)
        if root is not None:
            root.set_attributes(record.span_attributes())


async def _attempts(sink: ResponseSink, request: RelayRequest, decision: Decision,
                    record: DecisionRecordDraft) -> AttemptOutcome:
    attempts = record.attempts
    budget = settings.ANVIL_ATTEMPT_BUDGET
    last: AttemptOutcome | None = None
    failures: list[str] = []
    queue_refusal: FrontDoorError | None = None
    tried = 0
    for candidate in decision.candidates:
        serve = candidate.serve
        if tried >= budget:
            attempts.append({"serve": serve.name, "outcome": "budget-stop"})
            continue
        if await web_state.breaker_allows(serve.name, serve.loaded_at) == SKIP:
            attempts.append({"serve": serve.name, "outcome": "skipped-circuit"})
            continue
        tried += 1
        exchange = Exchange(request.dialect, request.endpoint, request.body, serve, request.request_id,
                            request.client_headers, started=request.started)
        try:
            upstream = exchange.upstream_request()
        except DialectError as exc:
            raise InvalidRequest(f"{exc.message} (serve {serve.name} speaks {serve.dialect}).",
                                 param=exc.param) from None
        record.notes += [note for note in exchange.notes if note not in record.notes]
        rule, verify_whole = commit_rule(candidate, exchange.stream)
        sink.tags[b"x-anvil-served-by"] = serve.name.encode()
        # Live calibration: a dict lookup, false unless an operator samples this serve × work class;
        # a sampled attempt keeps its answer's text, handed to the judge's queue after the client has it.
        sampled = await calibration.draw(serve.name, decision.work_class)
        outcome = AttemptOutcome(serve.name)
        reach = Reach()
        try:
            with tracing.span("anvil.attempt", {"anvil.serve": serve.name}) as attempt_span:
                async with reaching(serve, sink, request.principal, stream=exchange.stream, reach=reach):
                    outcome.started = time.perf_counter()  # the attempt's time, not the queue's
                    await run_attempt(sink, exchange, upstream, rule=rule, verify_whole=verify_whole,
                                      keep_answer=sampled, out=outcome)
                if attempt_span is not None:
                    attempt_span.set_attribute("anvil.outcome", outcome.label)
        except asyncio.CancelledError:
            record.client_left(outcome, request.started)
            raise
        except FrontDoorError as not_reached:  # its queue would not take it, or its load failed: try the next
            attempts.append({"serve": serve.name, "outcome": not_reached.code, **reach.as_log()})
            failures.append(not_reached.message)
            queue_refusal = not_reached
            continue
        await web_state.breaker_record(serve.name, not outcome.upstream_failed)
        entry = {**outcome.as_log(), **reach.as_log()}
        entry["commit"] = rule.value if exchange.stream else ("verify" if verify_whole else "off")
        attempts.append(entry)
        if outcome.committed:
            if outcome.answer is not None and outcome.label == "served":
                calibration.offer(serve.name, serve.fingerprint, decision.work_class, request.body, outcome.answer)
            return outcome
        last = outcome
        failures.append(outcome.error.message if outcome.error else
                        f"Serve {serve.name}'s answer failed verification ({', '.join(outcome.labels)})")
    sink.tags.pop(b"x-anvil-served-by", None)
    if queue_refusal is not None and (last is None or attempts[-1]["outcome"] == queue_refusal.code):
        queue_refusal.message = "; then ".join(failures)
        raise queue_refusal
    if last is not None and last.error is not None:
        last.error.message = "; then ".join(failures)  # every attempt, in order, in one message
        if decision.named and all(a.get("outcome") in SERVE_DOWN for a in attempts):
            raise model_unavailable(decision, last.error.message)
        raise last.error
    if last is not None:
        raise UpstreamFailed(f"No serve produced an answer that passed verification "
                             f"({', '.join(last.labels)}); attempts: "
                             + ", ".join(f"{a['serve']}: {a['outcome']}" for a in attempts))
    refused = refusal(decision, "", circuits_open=tuple(a["serve"] for a in attempts
                                                        if a["outcome"] == "skipped-circuit"))
    if decision.named:
        refused.code = "model_unavailable"
    raise refused


# Outcomes that mean the serve is not there (a timeout stays a 504: it is there, and slow).
SERVE_DOWN = frozenset({"unreachable", "skipped-circuit", "budget-stop"})


def model_unavailable(decision: Decision, why: str) -> Unavailable:
    """A named model none of whose serves could answer: 503, never another model's answer in its place."""
    return Unavailable(f"The model {decision.requested_model!r} is unavailable: {why.rstrip('.')}. No other model "
                       "answers in its place (a serve's fallback_to names the models that may).",
                       code="model_unavailable", headers=[(b"retry-after", b"5")])
