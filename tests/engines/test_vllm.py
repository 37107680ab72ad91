"""A real vLLM (CPU) behind Anvil, with no quality profile: the SDKs get what the engine gives.

The engine serves a tiny random Llama: its words are noise, but greedy decoding is deterministic,
so "identical direct and through Anvil" is a sharp test of the relay and of the translations.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.engines.registration import register
from tests.engines.stream_timing import timed_chat_stream
from tests.support.engines import EnginePeer

# Minutes for the first test: the package's vLLM starts inside it (~1 min on 2 idle cores, more when loaded).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(900)]

SERVE = "vllm"
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
# The anthropic SDK (2.x) has no `temperature` argument any more; the Messages API still takes it.
GREEDY_ANTHROPIC: dict[str, Any] = {"temperature": 0}
QUESTION = [{"role": "user", "content": "Describe the for statement."}]
WEATHER = [{"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
# An Anthropic tool-use history: the model asked for a tool, the client answered with its result.
TOOL_HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C and sunny"},
        {"type": "text", "text": "Thanks. Summarise it."}]},
]
# The same conversation as the engine's own dialect has it.
TOOL_HISTORY_OPENAI = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "toolu_01", "content": "18C and sunny"},
    {"role": "user", "content": "Thanks. Summarise it."},
]
WEATHER_OPENAI = [{"type": "function", "function": {
    "name": tool["name"], "description": tool["description"], "parameters": tool["input_schema"]}} for tool in WEATHER]


@pytest.fixture
def direct(vllm_engine: EnginePeer) -> openai.OpenAI:
    return openai.OpenAI(base_url=vllm_engine.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def served(anvil: str, key: str, vllm_engine: EnginePeer) -> str:
    register(anvil, key, vllm_engine, SERVE, engine="vllm")
    return SERVE


@pytest.fixture
def oai(anvil: str, key: str, served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def anth(anvil: str, key: str, served: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=120)


def test_chat_stream_is_identical_direct_and_through_anvil(
        direct: openai.OpenAI, oai: openai.OpenAI, vllm_engine: EnginePeer) -> None:
    params = {**GREEDY, "messages": QUESTION, "max_tokens": 400, "logprobs": True,
              "stream_options": {"include_usage": True}}
    own = timed_chat_stream(direct, vllm_engine.served_model, **params)
    relayed = timed_chat_stream(oai, SERVE, **params)
    # vLLM's chunk boundaries are not deterministic: when its API process falls behind the engine
    # (a loaded CPU), it merges the tokens waiting for a request into one chunk. Each token's logprob
    # entry rides in the chunk that carries it, so the token sequence is the comparable unit.
    assert relayed.tokens == own.tokens and relayed.text == own.text
    assert relayed.finish_reason == own.finish_reason
    assert relayed.completion_tokens == own.completion_tokens == len(own.tokens) == 400
    # That the first chunk reaches the client while the engine is still writing is shown where the
    # engine's pace can be read: llama.cpp's server (tests/engines/test_llama_cpp.py) and the scripted
    # engine (tests/inference/test_stream_commit_rules.py). vLLM's API server is no witness on a loaded
    # CPU: it delivers 400 tokens over anything from 0.07 to 1.5 s, in bursts, and its
    # num_requests_running gauge lags its engine steps by hundreds of milliseconds.


def test_a_strict_stream_is_held_verified_and_replayed_token_for_token(
        anvil: str, key: str, direct: openai.OpenAI, vllm_engine: EnginePeer) -> None:
    register(anvil, key, vllm_engine, "vllm-strict", engine="vllm", stream_verify="strict")
    oai = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=120)
    params = {**GREEDY, "messages": QUESTION, "max_tokens": 400, "logprobs": True}
    own = timed_chat_stream(direct, vllm_engine.served_model, **params)
    held = timed_chat_stream(oai, "vllm-strict", **params)
    assert held.tokens == own.tokens  # verified whole, then replayed token for token as the engine sent it


def test_completions_with_logprobs_and_echo_are_identical_direct_and_through_anvil(
        direct: openai.OpenAI, oai: openai.OpenAI, vllm_engine: EnginePeer) -> None:
    params = {**GREEDY, "prompt": "The for statement is used", "max_tokens": 16, "logprobs": 3, "echo": True}
    own = direct.completions.create(model=vllm_engine.served_model, **params)
    relayed = oai.completions.create(model=SERVE, **params)
    assert own.choices[0].logprobs.token_logprobs[0] is None  # echo: the prompt's tokens come back, scored
    assert relayed.model_dump()["choices"] == own.model_dump()["choices"]
    assert relayed.usage == own.usage

    streamed_params = {key: value for key, value in params.items() if key != "echo"}
    own_pieces = [choice.model_dump() for chunk in direct.completions.create(
        model=vllm_engine.served_model, stream=True, **streamed_params) for choice in chunk.choices]
    relayed_pieces = [choice.model_dump() for chunk in oai.completions.create(
        model=SERVE, stream=True, **streamed_params) for choice in chunk.choices]
    assert relayed_pieces == own_pieces and len(own_pieces) >= 16


def test_anthropic_sdk_gets_the_engines_own_answer_whole_and_streamed(
        direct: openai.OpenAI, anth: anthropic.Anthropic, vllm_engine: EnginePeer) -> None:
    own = direct.chat.completions.create(model=vllm_engine.served_model, messages=QUESTION, max_tokens=32,
                                         temperature=0)
    whole = anth.messages.create(model=SERVE, max_tokens=32, messages=QUESTION, extra_body=GREEDY_ANTHROPIC)
    assert [block.type for block in whole.content] == ["text"]
    assert whole.content[0].text == own.choices[0].message.content
    assert whole.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[own.choices[0].finish_reason]
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (own.usage.prompt_tokens,
                                                                     own.usage.completion_tokens)

    with anth.messages.stream(model=SERVE, max_tokens=32, messages=QUESTION, extra_body=GREEDY_ANTHROPIC) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == own.choices[0].message.content
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_anthropic_tools_and_tool_use_history_are_translated_and_accepted_by_vllm(
        direct: openai.OpenAI, anth: anthropic.Anthropic, vllm_engine: EnginePeer) -> None:
    # A random model makes no usable tool call, so the answer's content is not the point: that vLLM
    # accepts the translated tools and history, and renders the same prompt as from its own dialect.
    own = direct.chat.completions.create(model=vllm_engine.served_model, messages=TOOL_HISTORY_OPENAI,
                                         tools=WEATHER_OPENAI, max_tokens=24, temperature=0)
    bare = direct.chat.completions.create(model=vllm_engine.served_model, messages=TOOL_HISTORY_OPENAI[:1],
                                          max_tokens=1, temperature=0)

    whole = anth.messages.create(model=SERVE, max_tokens=24, tools=WEATHER, messages=TOOL_HISTORY,
                                 extra_body=GREEDY_ANTHROPIC)
    assert whole.role == "assistant" and whole.content
    assert whole.stop_reason in {"end_turn", "max_tokens", "tool_use"}
    # The tools and every turn of the history reached the chat template, as the engine renders them.
    assert whole.usage.input_tokens == own.usage.prompt_tokens > bare.usage.prompt_tokens + 20

    with anth.messages.stream(model=SERVE, max_tokens=24, tools=WEATHER, messages=TOOL_HISTORY,
                              extra_body=GREEDY_ANTHROPIC) as stream:
        final = stream.get_final_message()
    assert final.role == "assistant" and final.content
    assert final.stop_reason == whole.stop_reason
    assert [block.model_dump() for block in final.content] == [block.model_dump() for block in whole.content]
    assert final.usage.input_tokens == whole.usage.input_tokens
