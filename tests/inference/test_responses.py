"""POST /v1/responses through Anvil with the official openai SDK: translated to chat completions (an OpenAI
upstream), to messages (an Anthropic upstream), or passed through to a serve that speaks it natively;
llm-pool's shape of the same request; and what a stateless gateway must refuse."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TEXT = "".join(f"tok{i} " for i in range(8))
WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture
def key() -> str:
    return create_key(f"resp-{uuid.uuid4().hex[:6]}").secret


@pytest.fixture
def serves(anvil: str, upstream: str, key: str) -> Iterator[dict[str, str]]:
    httpx.delete(f"{upstream}/_requests")
    forget_breakers("chat-up", "anth-up", "native-up")
    allow_tiers("fast", "heavy", "native")
    Serve.objects.create(name="chat-up", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
    Serve.objects.create(name="anth-up", tier="heavy", engine="anthropic", dialect="anthropic",
                         base_url=f"{upstream}/v1", served_model="claude-up")
    Serve.objects.create(name="native-up", tier="native", base_url=f"{upstream}/v1", served_model="native-model",
                         responses_api=True)
    until_routed(anvil, key, {"chat-up": "allow", "anth-up": "allow", "native-up": "allow"})
    yield {"chat": "chat-up", "anthropic": "anth-up", "native": "native-up"}


@pytest.fixture
def client(anvil: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)


def record_for(request_id: str) -> DecisionRecord:
    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    return wait_for(written, 10, "the decision record to be written")


def upstream_bodies(upstream: str) -> list[dict[str, object]]:
    return httpx.get(f"{upstream}/_requests").json()


@pytest.mark.parametrize("via", ["chat", "anthropic", "native"])
def test_create_answers_through_every_kind_of_serve(client: openai.OpenAI, serves: dict[str, str], upstream: str,
                                                   via: str) -> None:
    response = client.responses.create(model=serves[via], input="hello", instructions="Be brief.",
                                       max_output_tokens=64)
    assert response.status == "completed"
    assert response.output_text == ("native tok0 native tok1" if via == "native" else TEXT)
    assert response.usage is not None and response.usage.input_tokens in (11, 13)
    sent = upstream_bodies(upstream)[-1]
    assert sent["path"] == {"chat": "/v1/chat/completions", "anthropic": "/v1/messages",
                            "native": "/v1/responses"}[via]
    if via == "chat":
        assert sent["body"]["messages"] == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hello"}]
        assert sent["body"]["max_tokens"] == 64
    if via == "native":
        assert sent["body"]["input"] == "hello" and sent["body"]["model"] == "native-model"


@pytest.mark.parametrize("via", ["chat", "anthropic", "native"])
def test_a_stream_follows_openais_event_sequence(client: openai.OpenAI, serves: dict[str, str], via: str) -> None:
    with client.responses.stream(model=serves[via], input="hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.index("response.output_item.added") < kinds.index("response.content_part.added") \
        < kinds.index("response.output_text.delta") < kinds.index("response.output_text.done") \
        < kinds.index("response.output_item.done")
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert final.output_text == ("native tok0 native tok1" if via == "native" else TEXT)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text


@pytest.mark.parametrize("via", ["chat", "anthropic"])
def test_tool_calls_become_function_call_items_and_history_goes_back(client: openai.OpenAI, serves: dict[str, str],
                                                                    upstream: str, via: str) -> None:
    response = client.responses.create(model=serves[via], tools=WEATHER, input="weather in Paris? [[tool]]")
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "units": "c"})]
    with client.responses.stream(model=serves[via], tools=WEATHER, input="weather in Paris? [[tool]]") as stream:
        streamed = [item for item in stream.get_final_response().output if item.type == "function_call"]
    assert json.loads(streamed[0].arguments) == {"city": "Paris", "units": "c"}
    # The call and its output go back as history, and reach the upstream in its own dialect.
    client.responses.create(model=serves[via], tools=WEATHER, input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C"},
    ])
    sent = upstream_bodies(upstream)[-1]["body"]
    if via == "chat":
        assert sent["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "18 C"}
    else:
        assert sent["messages"][1]["content"][0]["type"] == "tool_use"
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": calls[0].call_id,
                                                     "content": "18 C"}


def test_json_schema_and_reasoning_reach_the_upstream(client: openai.OpenAI, serves: dict[str, str],
                                                     upstream: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    raw = client.responses.with_raw_response.create(
        model=serves["chat"], input="hi [[reasoning]]", reasoning={"effort": "high"},
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema}})
    response = raw.parse()
    sent = upstream_bodies(upstream)[-1]["body"]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text.startswith("The user greets me.")
    record = record_for(raw.headers["x-request-id"])
    assert any("declares no reasoning switch" in note for note in record.notes)  # chat-up cannot reason


def test_store_and_previous_response_id_are_refused(client: openai.OpenAI, serves: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError, match="keeps no prompt text at rest") as stored:
        client.responses.create(model=serves["chat"], input="hi", store=True)
    assert stored.value.body["param"] == "store"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model=serves["chat"], input="hi", previous_response_id="resp_123")


def test_llm_pool_shape_with_decoding_and_metrics(anvil: str, key: str, serves: dict[str, str],
                                                  upstream: str) -> None:
    body = {"model": serves["native"], "input": "Translate: hello", "instructions": "Return only the translation.",
            "decoding": {"temperature": 0.1, "top_k": 1, "max_tokens": 32, "repetition_penalty": 1.0}}
    answer = httpx.post(f"{anvil}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200
    payload = answer.json()
    text = payload["output"][0]["content"][0]["text"]
    assert text == TEXT  # llm-pool's fields need translating, so even a native serve gets chat
    sent = upstream_bodies(upstream)[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert (sent["body"]["temperature"], sent["body"]["top_k"], sent["body"]["max_tokens"]) == (0.1, 1, 32)
    assert payload["metrics"]["pool_total_wall_ms"] > 0 and payload["metrics"]["engine_output_tokens"] == 8
    with httpx.stream("POST", f"{anvil}/v1/responses", json={**body, "stream": True},
                      headers={"authorization": f"Bearer {key}"}, timeout=30) as streamed:
        events = [line.removeprefix("event: ") for line in streamed.iter_lines() if line.startswith("event: ")]
    assert events[0] == "response.created" and events[-2:] == ["response.metrics", "response.completed"]
    assert "response.output_text.delta" in events


def test_an_upstream_failure_mid_stream_is_a_failed_response(client: openai.OpenAI, serves: dict[str, str]) -> None:
    with client.responses.stream(model=serves["chat"], input="hi [[midstream]]") as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    assert "failed mid-stream" in events[-1].response.error.message
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok0 tok1 tok2 "
