"""Reasoning crosses dialects: a request for thinking is switched on the way the serve declares, an
upstream's reasoning comes back as the client's own kind of thinking, and what cannot be sent is a
note in the decision record."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REASONING = "The user greets me. I should greet back. "


@pytest.fixture
def key() -> str:
    return create_key(f"think-{uuid.uuid4().hex[:6]}").secret


def serve(anvil: str, key: str, upstream: str, thinking: str, dialect: str = "openai") -> str:
    name = f"{thinking or 'plain'}-{dialect}-{uuid.uuid4().hex[:4]}"
    Serve.objects.create(name=name, tier="fast", base_url=f"{upstream}/v1", served_model="m", thinking=thinking,
                         engine="anthropic" if dialect == "anthropic" else "vllm", dialect=dialect)
    allow_tiers("fast")
    until_routed(anvil, key, {name: "allow"})
    return name


def last_sent(upstream: str) -> dict[str, object]:
    return httpx.get(f"{upstream}/_requests").json()[-1]["body"]


def record_for(request_id: str) -> DecisionRecord:
    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    return wait_for(written, 10, "the decision record to be written")


def test_an_openai_upstreams_reasoning_becomes_anthropic_thinking_blocks(anvil: str, key: str,
                                                                         upstream: str) -> None:
    name = serve(anvil, key, upstream, "template")
    client = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30)
    whole = client.messages.create(model=name, max_tokens=64,
                                   messages=[{"role": "user", "content": "hi [[reasoning]]"}])
    assert [block.type for block in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == REASONING.strip()
    with client.messages.stream(model=name, max_tokens=64,
                                messages=[{"role": "user", "content": "hi [[reasoning]]"}]) as stream:
        thinking = "".join(event.thinking for event in stream if event.type == "thinking")
        final = stream.get_final_message()
    assert thinking == REASONING
    assert [block.type for block in final.content] == ["thinking", "text"]


@pytest.mark.parametrize(("thinking", "expected"), [
    ("template", {"chat_template_kwargs": {"enable_thinking": True}}),
    ("effort", {"reasoning_effort": "medium"}),
])
def test_anthropic_thinking_is_switched_on_the_way_the_serve_declares(anvil: str, key: str, upstream: str,
                                                                     thinking: str, expected: dict) -> None:
    name = serve(anvil, key, upstream, thinking)
    client = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30)
    client.messages.create(model=name, max_tokens=8000, thinking={"type": "enabled", "budget_tokens": 4096},
                           messages=[{"role": "user", "content": "hi"}])
    sent = last_sent(upstream)
    assert {k: sent.get(k) for k in expected} == expected


def test_a_serve_that_cannot_reason_gets_none_and_the_decision_says_so(anvil: str, key: str, upstream: str) -> None:
    name = serve(anvil, key, upstream, "")
    raw = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=30).messages.with_raw_response.create(
        model=name, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "hi"}])
    sent = last_sent(upstream)
    assert "reasoning_effort" not in sent and "chat_template_kwargs" not in sent
    notes = record_for(raw.headers["x-request-id"]).notes
    assert any("declares no reasoning switch" in note for note in notes)


def test_openai_reasoning_effort_reaches_an_anthropic_upstream_as_thinking(anvil: str, key: str,
                                                                          upstream: str) -> None:
    name = serve(anvil, key, upstream, "native", dialect="anthropic")
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model=name, reasoning_effort="high", max_tokens=1000,
                                                           messages=[{"role": "user", "content": "hi"}])
    sent = last_sent(upstream)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert sent["max_tokens"] == 16384 + 1000  # Anthropic counts the budget inside max_tokens
    notes = record_for(raw.headers["x-request-id"]).notes
    assert any("max_tokens raised from 1000" in note for note in notes)
