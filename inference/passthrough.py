"""Paths relayed as they are, to the serves that answer them: the HRM worker's /generate and /loglikelihood,
the tokenizer routes lm-eval's remote tokenizer calls (/tokenizer_info, /tokenize, /detokenize),
/v1/embeddings, and Anthropic's /v1/messages/count_tokens (answered with the serve's own tokenizer).

Each goes through routing (``routing.decide.decide_for_path``: which serves can answer it; a named
model is answered by that model alone), tries its candidates within the attempt budget past open
circuits, falls back on a 5xx or an unreachable serve, and leaves a decision record like every
other path. The serve's answer, errors included, reaches the client as the serve wrote it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

from anvil_site import tracing
from inference.admission import ADMISSION
from inference.attempt import ResponseSink
from inference.auth import Principal
from inference.errors import (
    FrontDoorError,
    InvalidRequest,
    NotFound,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    error_body,
)
from inference.exchange import upstream_request_id
from inference.key_limits import limited
from inference.key_reach import reach_of, within
from inference.pool_wait import Reach, not_loaded, reaching
from inference.serving import DecisionRecordDraft, make_decision, raise_if_out_of_reach, refusal, top_price
from inference.upstream_client import UpstreamError, UpstreamRequest, UpstreamTimedOut, open_upstream
from inference.wire import Dialect, anthropic_client
from routing import web_state
from routing.breaker import SKIP
from routing.decide import AUTO_MODELS, Decision, decide_for_path
from routing.decision_log import DECISION_LOG
from serves.catalog import ServeView, current_serves
from serves.upstream_keys import upstream_auth_headers

MAX_ANSWER_BYTES = 64 * 1024 * 1024
TOKENIZER_ENGINES = frozenset({"vllm", "hrm"})  # serve /tokenize, /detokenize and /tokenizer_info at their root


def _hrm(serve: ServeView) -> str | None:
    return None if serve.engine == "hrm" else f"engine {serve.engine} has no /generate or /loglikelihood"


def _tokenizer(serve: ServeView) -> str | None:
    return None if serve.engine in TOKENIZER_ENGINES else f"engine {serve.engine} serves no tokenizer routes"


def _embeddings(serve: ServeView) -> str | None:
    return None if serve.embeddings and serve.dialect == "openai" else "does not declare the embeddings capability"


@dataclass(frozen=True)
class PassPath:
    """One relayed path: where it goes on a serve, which serves answer it, how the record names it."""

    upstream_path: str
    at_root: bool  # the serve's server root (HRM and vLLM's native routes) rather than its /v1 base
    work_class: str
    why_not: Callable[[ServeView], str | None]


PATHS: dict[str, PassPath] = {
    "/generate": PassPath("/generate", True, "native", _hrm),
    "/loglikelihood": PassPath("/loglikelihood", True, "native", _hrm),
    "/tokenizer_info": PassPath("/tokenizer_info", True, "tokenize", _tokenizer),
    "/tokenize": PassPath("/tokenize", True, "tokenize", _tokenizer),
    "/detokenize": PassPath("/detokenize", True, "tokenize", _tokenizer),
    "/v1/embeddings": PassPath("/embeddings", False, "embeddings", _embeddings),
}


def _url(serve: ServeView, path: str, at_root: bool) -> str:
    root = serve.base_url.removesuffix("/").removesuffix("/v1")
    return (root if at_root else serve.base_url) + path


def _headers(serve: ServeView, request_id: str) -> dict[str, str]:
    return {"content-type": "application/json", "x-request-id": upstream_request_id(request_id),
            **upstream_auth_headers(serve.dialect, serve.api_key_env)}


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: bytes


async def _try(serve: ServeView, request: UpstreamRequest) -> _Answer:
    async with open_upstream(request) as response:
        body = await response.read_capped(MAX_ANSWER_BYTES)
        content_type = response.headers.get("content-type", "application/json").encode("latin-1")
        return _Answer(response.status, body, content_type)


async def _relay(sink: ResponseSink, decision: Decision, record: DecisionRecordDraft, principal: Principal | None,
                 build: Callable[[ServeView], UpstreamRequest | None],
                 answer: Callable[[ServeView, _Answer], _Answer] = lambda serve, found: found) -> None:
    """Try the decision's candidates in order; the first that answers (below 500) answers the client."""
    failures: list[str] = []
    tried = 0
    last_error: FrontDoorError | None = None
    for candidate in decision.candidates:
        serve = candidate.serve
        if tried >= settings.ANVIL_ATTEMPT_BUDGET:
            record.attempts.append({"serve": serve.name, "outcome": "budget-stop"})
            continue
        if await web_state.breaker_allows(serve.name, serve.loaded_at) == SKIP:
            record.attempts.append({"serve": serve.name, "outcome": "skipped-circuit"})
            continue
        request = build(serve)
        if request is None:
            continue
        tried += 1
        started = time.perf_counter()
        entry: dict[str, Any] = {"serve": serve.name}
        reach = Reach()
        try:
            async with reaching(serve, sink, principal, stream=False, reach=reach):  # its queue, a load on demand
                started = time.perf_counter()
                found = answer(serve, await _try(serve, request))
        except FrontDoorError as not_reached:  # its queue would not take it, or its load failed
            last_error = not_reached
            entry.update(outcome=not_reached.code, **reach.as_log())
            record.attempts.append(entry)
            failures.append(not_reached.message)
            continue
        except UpstreamTimedOut as exc:
            last_error = UpstreamTimeout(f"Serve {serve.name} did not answer in time: {exc}.")
            entry.update(outcome="timeout")
        except UpstreamError as exc:
            last_error = UpstreamFailed(f"Serve {serve.name} could not be reached: {exc}.")
            entry.update(outcome="unreachable")
        else:
            entry.update(status=found.status, outcome="served" if found.status < 500 else "fallback")
            if found.status >= 500:
                last_error = UpstreamFailed(f"Serve {serve.name} failed (HTTP {found.status}).")
        entry["ms"] = round((time.perf_counter() - started) * 1000, 3)
        entry.update(reach.as_log())
        record.attempts.append(entry)
        await web_state.breaker_record(serve.name, entry["outcome"] == "served")
        if entry["outcome"] == "served":
            sink.tags[b"x-anvil-served-by"] = serve.name.encode()
            record.served_by, record.outcome, record.status = serve.name, "served", found.status
            record.bytes_out = len(found.body)
            await sink.send_complete(found.status, found.body, sink.base_headers(found.content_type))
            return
        assert last_error is not None
        failures.append(last_error.message)
    if last_error is not None:
        last_error.message = "; then ".join(failures)
        raise last_error
    raise Unavailable("Every candidate serve is unavailable (open circuit breakers); retry shortly.",
                      headers=[(b"retry-after", str(int(settings.ANVIL_BREAKER_COOLDOWN) or 1).encode())])


def path_refusal(decision: Decision, path: str) -> FrontDoorError:
    """Why nobody answers a relayed path: no such model, a model that cannot, or no serve that can."""
    why = "; ".join(f"{name}: {reason}" for name, reason in decision.excluded)
    if decision.not_loaded:
        return not_loaded(decision.requested_model, decision.not_loaded, decision.not_loaded_error)
    if decision.unknown_model:
        return NotFound(f"No enabled serve is named {decision.requested_model!r}.", param="model",
                        code="model_not_found")
    if decision.requested_model and decision.requested_model not in AUTO_MODELS:  # "auto" asks for any serve
        return NotFound(f"The model {decision.requested_model!r} cannot answer {path} ({why}).", param="model")
    return Unavailable(f"No enabled serve answers {path}" + (f" ({why})." if why else "."))


async def _served(sink: ResponseSink, decision: Decision, record: DecisionRecordDraft, principal: Principal | None,
                  started: float, go: Callable[[], Any], refuse: Callable[[Decision], FrontDoorError],
                  body: dict[str, Any] | None) -> None:
    """Run ``go`` (the relay) under admission, recording the outcome whatever it is."""
    record.decided(decision)
    sink.tags[b"x-anvil-decision"] = record.id.encode()
    sink.tags[b"x-anvil-work-class"] = decision.work_class.encode()
    sink.timing["decide"] = (time.perf_counter() - started) * 1000
    try:
        if not decision.candidates:
            raise refuse(decision)
        async with limited(principal, body, sink.tags, sink.timing, default_cap=0, price=top_price(decision)) as ticket:
            try:
                with ADMISSION.admit(principal.key_id if principal else None):
                    await go()
            finally:
                record.priced(decision)
                if ticket is not None:
                    ticket.settle(record.prompt_tokens, record.completion_tokens, served=bool(record.served_by),
                                  cost=record.spend_usd)
    except FrontDoorError as error:
        record.outcome, record.status = "error", error.status_code
        raise
    finally:
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        DECISION_LOG.append(asdict(record))


async def serve_path(sink: ResponseSink, path: str, method: str, body: dict[str, Any] | None, model: str | None,
                     principal: Principal | None, request_id: str) -> None:
    """Relay one request on a ``PATHS`` route; ``body`` (without ``model`` for the HRM routes) goes as is."""
    if not tracing.active():
        await _serve_path(sink, path, method, body, model, principal, request_id)
        return
    with tracing.request_span("anvil.request", {}, {"anvil.endpoint": path, "anvil.request_id": request_id}):
        await _serve_path(sink, path, method, body, model, principal, request_id)


async def _serve_path(sink: ResponseSink, path: str, method: str, body: dict[str, Any] | None, model: str | None,
                      principal: Principal | None, request_id: str) -> None:
    started = time.perf_counter()
    route = PATHS[path]
    reach = reach_of(principal, body or {})
    every = await current_serves()
    serves, refused = within(every, reach)
    decision = decide_for_path(model, serves, route.why_not, route.work_class, web_state.policy_config())
    if decision.unknown_model:
        every = await current_serves(force=True)
        serves, refused = within(every, reach)
        decision = decide_for_path(model, serves, route.why_not, route.work_class, web_state.policy_config())
        if decision.unknown_model and refused and model:
            raise_if_out_of_reach(model, every, refused)
    record = DecisionRecordDraft(str(uuid.uuid4()), request_id, path.rsplit("/", 1)[-1],
                                 api_key=f"{principal.name} ({principal.prefix})" if principal else "",
                                 key_id=principal.key_id if principal else None)

    def build(serve: ServeView) -> UpstreamRequest:
        sent = body
        if path == "/v1/embeddings" and body is not None:
            sent = {**body, "model": serve.served_model}
        elif route.at_root and path != "/generate" and path != "/loglikelihood" and body is not None:
            sent = {**body, "model": serve.served_model}  # vLLM's tokenizer routes take the served name
        return UpstreamRequest(_url(serve, route.upstream_path, route.at_root),
                               json.dumps(sent).encode() if sent is not None else None,
                               _headers(serve, request_id), method=method)

    await _served(sink, decision, record, principal, started, lambda: _relay(sink, decision, record, principal, build),
                  lambda refused: path_refusal(refused, path), body)


async def count_tokens(sink: ResponseSink, body: dict[str, Any], principal: Principal | None,
                       request_id: str, client_headers: dict[bytes, bytes]) -> None:
    """Anthropic's POST /v1/messages/count_tokens, counted by the serve that would answer the request.

    An Anthropic upstream counts for itself; a vLLM or HRM serve renders the conversation with its own
    chat template and tokenizer (``/tokenize`` with ``messages``); any other serve cannot count.
    """
    started = time.perf_counter()
    decision = await make_decision({**body, "max_tokens": 1}, frozenset({"openai", "anthropic"}), principal)
    record = DecisionRecordDraft(str(uuid.uuid4()), request_id, "count-tokens",
                                 api_key=f"{principal.name} ({principal.prefix})" if principal else "",
                                 key_id=principal.key_id if principal else None)
    if decision.candidates:
        # Counted by the serve that would answer: another serve's tokenizer gives another count.
        first = decision.candidates[0]
        if first.serve.dialect != "anthropic" and first.serve.engine not in TOKENIZER_ENGINES:
            raise InvalidRequest(f"Serve {first.serve.name}, which would answer this request, cannot count its "
                                 "tokens (only an Anthropic upstream, vLLM or the HRM worker can).",
                                 code="count_tokens_unsupported")
        decision = Decision(decision.requested_model, decision.work_class, decision.confident, (first,),
                            decision.excluded, decision.notes, decision.unknown_model, decision.too_large)

    def build(serve: ServeView) -> UpstreamRequest:
        if serve.dialect == "anthropic":
            headers = _headers(serve, request_id)
            version = client_headers.get(b"anthropic-version")
            if version:
                headers["anthropic-version"] = version.decode("latin-1")
            return UpstreamRequest(serve.base_url + "/messages/count_tokens",
                                   json.dumps({**body, "model": serve.served_model}).encode(), headers)
        chat = anthropic_client.request_to_openai({**body, "max_tokens": 1}, serve.served_model)
        tokenize = {"model": serve.served_model, "messages": chat["messages"], "add_generation_prompt": True}
        if chat.get("tools"):
            tokenize["tools"] = chat["tools"]
        return UpstreamRequest(_url(serve, "/tokenize", True), json.dumps(tokenize).encode(),
                               _headers(serve, request_id))

    def answer(serve: ServeView, found: _Answer) -> _Answer:
        if serve.dialect == "anthropic" or 400 <= found.status < 500 and found.status not in (404, 405):
            return found
        if found.status in (404, 405):
            message = f"Serve {serve.name} has no /tokenize route to count with (HTTP {found.status})."
            return _Answer(400, error_body(InvalidRequest(message, code="count_tokens_unsupported"),
                                           Dialect.ANTHROPIC), b"application/json")
        if found.status >= 400:
            return found
        try:
            count = int(json.loads(found.body)["count"])
        except (ValueError, TypeError, KeyError):  # not what /tokenize answers: the serve's failure
            return _Answer(502, b"", b"application/json")
        return _Answer(found.status, json.dumps({"input_tokens": count}).encode(), b"application/json")

    serves, _ = within(await current_serves(), reach_of(principal, body))  # only what the key may use
    known = ", ".join(s.name for s in serves) or "none"
    await _served(sink, decision, record, principal, started,
                  lambda: _relay(sink, decision, record, principal, build, answer),
                  lambda refused: refusal(refused, known), body)
