"""The relaying endpoints: /v1/chat/completions, /v1/completions, /v1/messages, and /v1/route (explain).

Per request: validate, ask routing for a decision (ordered candidates with verdicts), then
try the candidates in order within the attempt budget (``inference/attempt.py``), skipping
serves whose circuit is open; the first attempt that commits answers the client. Every
request leaves one decision record (metadata only) in the decision log.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.conf import settings

from inference.admission import ADMISSION
from inference.attempt import AttemptOutcome, run_attempt
from inference.auth import Principal
from inference.consumers.base import FrontDoorConsumer
from inference.errors import (
    Dialect,
    FrontDoorError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UpstreamFailed,
)
from inference.exchange import Exchange
from inference.protocol import parse_json_object, validate_chat, validate_completion, validate_messages
from routing import live
from routing.breaker import SKIP
from routing.decide import Decision, decide
from routing.decision_log import DECISION_LOG
from routing.dialects import DialectError
from serves.catalog import SERVE_CATALOG


async def make_decision(body: dict[str, Any], dialects: frozenset[str]) -> Decision:
    serves = await SERVE_CATALOG.get()
    profile, rules = await live.PROFILE.get(), await live.RULES.get()
    decision = decide(body, serves, profile, rules, live.policy_config(), dialects=dialects)
    if decision.unknown_model:  # perhaps a serve added a moment ago: look again before a 404
        serves = await SERVE_CATALOG.get(force=True)
        decision = decide(body, serves, profile, rules, live.policy_config(), dialects=dialects)
    return decision


def refuse(decision: Decision, serves_known: str) -> FrontDoorError:
    if decision.unknown_model:
        return NotFound(f"The model {decision.requested_model!r} does not exist. Serves you can name: "
                        f"{serves_known}; or auto, or a preset (anvil/planning, anvil/chat, …).",
                        param="model", code="model_not_found")
    if decision.too_large:
        return PayloadTooLarge("No serve's context window fits this request: "
                               + "; ".join(why for _, why in decision.excluded))
    why = "; ".join(f"{name}: {reason}" for name, reason in decision.excluded) or "no enabled serve"
    return Unavailable(f"No serve may answer this {decision.work_class} request ({why}).")


class RelayConsumer(FrontDoorConsumer):
    endpoint = "chat"
    upstream_dialects = frozenset({"openai", "anthropic"})

    def validate(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def respond(self, raw: bytes, principal: Principal | None) -> None:
        started = time.perf_counter()
        body = parse_json_object(raw)
        self.validate(body)
        decision = await make_decision(body, self.upstream_dialects)
        self.decision_id = str(uuid.uuid4())
        self.work_class = decision.work_class
        record: dict[str, Any] = {
            "id": self.decision_id, "request_id": self.request_id, "endpoint": self.endpoint,
            "api_key": f"{principal.name} ({principal.prefix})" if principal else "",
            "requested_model": decision.requested_model[:200], "work_class": decision.work_class,
            "confident": decision.confident, "notes": list(decision.notes),
            "candidates": [{"serve": c.serve.name, "verdict": c.verdict} for c in decision.candidates]
            + [{"serve": name, "verdict": "excluded", "why": why} for name, why in decision.excluded],
        }
        attempts: list[dict[str, Any]] = []
        final: AttemptOutcome | None = None
        try:
            if not decision.candidates:
                serves = await SERVE_CATALOG.get()
                raise refuse(decision, ", ".join(s.name for s in serves) or "none")
            with ADMISSION.admit(principal.key_id if principal else None):
                final = await self._attempts(decision, body, attempts)
        except FrontDoorError as error:
            record.update(outcome="error", status=error.status_code)
            raise
        finally:
            record["attempts"] = attempts
            record["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            if final is not None:
                record.update(served_by=final.serve if final.committed else "", outcome=final.label,
                              status=final.status, prompt_tokens=final.prompt_tokens,
                              completion_tokens=final.completion_tokens, bytes_out=final.bytes_out,
                              ttft_ms=round((final.first_byte_at - started) * 1000, 3) if final.first_byte_at
                              else None)
            DECISION_LOG.append(record)

    async def _attempts(self, decision: Decision, body: dict[str, Any],
                        attempts: list[dict[str, Any]]) -> AttemptOutcome:
        budget = settings.ANVIL_ATTEMPT_BUDGET
        last: AttemptOutcome | None = None
        failures: list[str] = []
        tried = 0
        for candidate in decision.candidates:
            serve = candidate.serve
            if tried >= budget:
                attempts.append({"serve": serve.name, "outcome": "budget-stop"})
                continue
            if await live.breaker_allows(serve.name) == SKIP:
                attempts.append({"serve": serve.name, "outcome": "skipped-circuit"})
                continue
            tried += 1
            exchange = Exchange(self.dialect, self.endpoint, body, serve, self.request_id,
                                dict(self.scope["headers"]))
            try:
                request = exchange.upstream_request()
            except DialectError as exc:
                raise InvalidRequest(f"{exc.message} (serve {serve.name} speaks {serve.dialect}).",
                                     param=exc.param) from None
            self.served_by = serve.name.encode()
            outcome = await run_attempt(self, exchange, request, verify=candidate.verdict == "allow-with-verify")
            await live.breaker_record(serve.name, not outcome.upstream_failed)
            attempts.append(outcome.as_log())
            if outcome.committed:
                if outcome.error is not None:
                    raise outcome.error
                return outcome
            last = outcome
            failures.append(outcome.error.message if outcome.error else
                            f"Serve {serve.name}'s answer failed verification ({', '.join(outcome.labels)})")
        self.served_by = b""
        if last is not None and last.error is not None:
            last.error.message = "; then ".join(failures)  # every attempt, in order, in one message
            raise last.error
        if last is not None:
            raise UpstreamFailed(f"No serve produced an answer that passed verification "
                                 f"({', '.join(last.labels)}); attempts: "
                                 + ", ".join(f"{a['serve']}: {a['outcome']}" for a in attempts))
        raise Unavailable("Every candidate serve is unavailable (open circuit breakers); retry shortly.",
                          headers=[(b"retry-after", str(int(settings.ANVIL_BREAKER_COOLDOWN) or 1).encode())])

    def base_headers(self, content_type: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
        headers = super().base_headers(content_type)
        served_by = getattr(self, "served_by", None)
        if served_by:
            headers.append((b"x-anvil-served-by", served_by))
        if getattr(self, "decision_id", None):
            headers.append((b"x-anvil-decision", self.decision_id.encode()))
            headers.append((b"x-anvil-work-class", self.work_class.encode()))
        return headers


class ChatCompletionsConsumer(RelayConsumer):
    endpoint = "chat"

    def validate(self, body: dict[str, Any]) -> None:
        validate_chat(body)


class CompletionsConsumer(RelayConsumer):
    endpoint = "completions"
    upstream_dialects = frozenset({"openai"})

    def validate(self, body: dict[str, Any]) -> None:
        validate_completion(body)


class MessagesConsumer(RelayConsumer):
    endpoint = "messages"
    dialect = Dialect.ANTHROPIC

    def validate(self, body: dict[str, Any]) -> None:
        validate_messages(body)


class RouteConsumer(FrontDoorConsumer):
    """POST /v1/route: the decision for a request (either dialect's body), calling no serve."""

    async def respond(self, raw: bytes, principal: Principal | None) -> None:
        body = parse_json_object(raw)
        if "messages" not in body and "prompt" not in body:
            raise InvalidRequest("Send the body you would send to /v1/chat/completions or /v1/messages.",
                                 param="messages")
        decision = await make_decision(body, frozenset({"openai", "anthropic"}))
        payload = decision.explain()
        payload.update(unknown_model=decision.unknown_model, too_large=decision.too_large)
        await self.send_json(200, payload)
