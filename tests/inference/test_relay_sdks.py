"""The official openai and anthropic SDKs, through Anvil under Daphne, to scripted upstreams (real processes)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WEATHER_OPENAI = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
WEATHER_ANTHROPIC = [{"name": "get_weather", "description": "Weather for a city",
                      "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]}}]
ARGS = {"city": "Paris", "units": "c"}


@pytest.fixture
def key() -> str:
    return create_key("sdk-tests").secret


@pytest.fixture
def serves(upstream: str) -> dict[str, Serve]:
    httpx.delete(f"{upstream}/_requests")
    forget_breakers("oa", "an")  # failures an earlier test provoked on purpose stay in that test
    allow_tiers("fast", "heavy")  # measured and trusted: relayed without a commit window
    return {
        "oa": Serve.objects.create(name="oa", tier="fast", engine="vllm", base_url=f"{upstream}/v1",
                                   served_model="up-model"),
        "an": Serve.objects.create(name="an", tier="heavy", engine="anthropic", dialect="anthropic",
                                   base_url=f"{upstream}/v1", served_model="claude-up"),
    }


@pytest.fixture
def routed(anvil: str, key: str, serves: dict[str, Serve]) -> dict[str, Serve]:
    until_routed(anvil, key, {"oa": "allow", "an": "allow"})
    return serves


@pytest.fixture
def oai(anvil: str, key: str, routed: dict[str, Serve]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def anth(anvil: str, key: str, routed: dict[str, Serve]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=20)


def seen(upstream: str) -> list[dict]:
    return httpx.get(f"{upstream}/_requests").json()


# --- same dialect --------------------------------------------------------------------


def test_openai_whole_answer_carries_upstream_usage_and_anvil_headers(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="oa", messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    assert answer.choices[0].message.content.startswith("tok0 tok1")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 8)  # the upstream's numbers
    assert raw.headers["x-anvil-served-by"] == "oa"
    assert raw.headers["x-request-id"].startswith("req_")


def test_openai_stream_relays_every_chunk(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="oa", messages=[{"role": "user", "content": "hi"}], stream=True,
                                              stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == [f"tok{i} " for i in range(8)]
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 8


def test_same_dialect_body_is_forwarded_with_tools_and_unknown_fields(oai: openai.OpenAI, upstream: str) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    oai.chat.completions.create(model="oa", messages=[{"role": "user", "content": "hi [[tool]]"}],
                                tools=WEATHER_OPENAI, tool_choice=choice,
                                extra_body={"vendor_knob": {"x": [1, 2]}, "top_k": 5})
    body = seen(upstream)[-1]["body"]
    assert body["model"] == "up-model"  # the one field Anvil rewrites
    assert body["tools"] == WEATHER_OPENAI
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["vendor_knob"] == {"x": [1, 2]} and body["top_k"] == 5


def test_completions_relay(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(model="oa", prompt="Once", max_tokens=8)
    assert answer.choices[0].text.startswith("tok0") and answer.usage.prompt_tokens == 11
    streamed = "".join(c.choices[0].text for c in oai.completions.create(model="oa", prompt="Once", stream=True))
    assert streamed == "".join(f"tok{i} " for i in range(8))


def test_anthropic_to_anthropic_stream_and_whole(anth: anthropic.Anthropic) -> None:
    with anth.messages.stream(model="an", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(f"tok{i} " for i in range(8))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (13, 8)
    whole = anth.messages.create(model="an", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert whole.content[0].text.startswith("tok0") and whole.stop_reason == "end_turn"


# --- across dialects: tool calls round trip ----------------------------------------------


def test_anthropic_client_tool_round_trip_through_an_openai_upstream(anth: anthropic.Anthropic, upstream: str) -> None:
    with anth.messages.stream(model="oa", max_tokens=64, tools=WEATHER_ANTHROPIC,
                              tool_choice={"type": "any"},
                              messages=[{"role": "user", "content": "weather? [[tool]]"}]) as stream:
        first = stream.get_final_message()
    tool_use = [block for block in first.content if block.type == "tool_use"]
    assert [block.type for block in first.content] == ["tool_use"]  # no empty text block before it
    assert tool_use[0].name == "get_weather" and tool_use[0].input == ARGS  # not {}
    assert first.stop_reason == "tool_use"
    assert (first.usage.input_tokens, first.usage.output_tokens) == (11, 4)
    sent = seen(upstream)[-1]["body"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_ANTHROPIC[0]["input_schema"]
    assert sent["tool_choice"] == "required" and sent["stream_options"] == {"include_usage": True}

    second = anth.messages.create(model="oa", max_tokens=64, tools=WEATHER_ANTHROPIC, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use[0].id, "content": "18C"},
                                     {"type": "text", "text": "thanks"}]},
    ])
    assert second.content[0].type == "text"
    history = seen(upstream)[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "user"]
    assert history[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": json.dumps(ARGS)}
    assert history[2] == {"role": "tool", "tool_call_id": tool_use[0].id, "content": "18C"}


def test_anthropic_client_keeps_text_and_tool_name_from_one_chunk(anth: anthropic.Anthropic) -> None:
    with anth.messages.stream(model="oa", max_tokens=64, tools=WEATHER_ANTHROPIC,
                              messages=[{"role": "user", "content": "go [[text+tool]]"}]) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check."
    assert final.content[1].name == "get_weather" and final.content[1].input == ARGS
    assert final.stop_reason == "tool_use"


def test_openai_client_tool_round_trip_through_an_anthropic_upstream(oai: openai.OpenAI, upstream: str) -> None:
    chunks = list(oai.chat.completions.create(
        model="an", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "w? [[tool]]"}],
        tools=WEATHER_OPENAI, tool_choice="required", stream=True, stream_options={"include_usage": True}))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] = (call.function.name if call.function else None) or entry["name"]
                entry["arguments"] += (call.function.arguments or "") if call.function else ""
    assert calls == {0: {"id": "toolu_1", "name": "get_weather", "arguments": json.dumps(ARGS)}}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage.prompt_tokens == 13 and chunks[-1].usage.completion_tokens == 4
    sent = seen(upstream)[-1]["body"]
    assert sent["system"] == "Be brief." and sent["tool_choice"] == {"type": "any"}
    assert sent["tools"][0]["input_schema"] == WEATHER_OPENAI[0]["function"]["parameters"]

    oai.chat.completions.create(model="an", tools=WEATHER_OPENAI, messages=[
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "25C"},
        {"role": "user", "content": "and?"},
    ])
    turns = seen(upstream)[-1]["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # tool results merged: turns alternate
    assert [b["type"] for b in turns[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert turns[1]["content"][0] == {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": ARGS}


def test_openai_client_whole_answer_from_an_anthropic_upstream(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(model="an", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content.startswith("tok0")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (13, 8)


# --- errors in each SDK's own exception classes ----------------------------------------------


def test_errors_surface_as_openai_exceptions(anvil: str, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError, match="Incorrect or revoked API key"):
        openai.OpenAI(base_url=f"{anvil}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="Serves you can name: oa, an"):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="oa", messages=[])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.InternalServerError) as failed:
        oai.chat.completions.create(model="oa", messages=[{"role": "user", "content": "[[error500]]"}])
    assert failed.value.status_code == 502 and "Serve oa failed" in str(failed.value)
    with pytest.raises(openai.BadRequestError, match="the scripted server refuses this request"):
        oai.chat.completions.create(model="oa", messages=[{"role": "user", "content": "[[invalid400]]"}])
    with pytest.raises(openai.APIStatusError) as big:
        oai.chat.completions.create(model="oa", messages=[{"role": "user", "content": "x" * 70000}])
    assert big.value.status_code == 413


def test_errors_surface_as_anthropic_exceptions(anvil: str, anth: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=anvil, api_key="wrong", max_retries=0).messages.create(
            model="an", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        anth.messages.create(model="an", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.NotFoundError):
        anth.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.InternalServerError) as failed:
        anth.messages.create(model="oa", max_tokens=5, messages=[{"role": "user", "content": "[[error500]]"}])
    assert failed.value.status_code == 502


def test_a_broken_stream_ends_with_an_error_event_in_each_dialect(oai: openai.OpenAI,
                                                                  anth: anthropic.Anthropic) -> None:
    received = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in oai.chat.completions.create(model="oa", stream=True,
                                                 messages=[{"role": "user", "content": "[[midstream]]"}]):
            received.append(chunk)
    assert len(received) >= 3  # what arrived before the break was delivered
    with pytest.raises(anthropic.APIStatusError, match="failed mid-stream"):
        with anth.messages.stream(model="oa", max_tokens=64,
                                  messages=[{"role": "user", "content": "[[midstream]]"}]) as stream:
            for _ in stream:
                pass


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_an_upstream_that_never_answers_is_a_504(anvil: str, key: str, silent_upstream: int) -> None:
    Serve.objects.create(name="mute", tier="fast", base_url=f"http://127.0.0.1:{silent_upstream}/v1",
                         served_model="m")  # the only serve: nothing to fall back to
    allow_tiers("fast")
    until_routed(anvil, key, {"mute": "allow"})
    oai = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=20)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as timed_out:
        oai.chat.completions.create(model="mute", messages=[{"role": "user", "content": "hi"}])
    assert timed_out.value.status_code == 504
    assert time.monotonic() - started < 10  # ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT=2 for this server


def test_over_the_per_key_cap_is_a_429(anvil: str, key: str, routed: dict[str, Serve]) -> None:
    streams = []
    client = httpx.Client(timeout=30)
    try:
        for _ in range(3):  # ANVIL_MAX_CONCURRENCY_PER_KEY=3 for this server
            response = client.send(client.build_request(
                "POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                json={"model": "oa", "stream": True, "messages": [{"role": "user", "content": "[[slow]]"}]}),
                stream=True)
            reader = response.iter_raw()  # kept: a dropped iterator closes the stream
            next(reader)  # the stream is open and holding its slot
            streams.append((response, reader))
        with pytest.raises(openai.RateLimitError, match="ANVIL_MAX_CONCURRENCY_PER_KEY"):
            openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0).chat.completions.create(
                model="oa", messages=[{"role": "user", "content": "hi"}])
    finally:
        for response, _reader in streams:
            response.close()
        client.close()
