"""llama.cpp's OpenAI-compatible server (llama-cpp-python) behind Anvil, with no quality profile.

A real upstream nobody here wrote, and a strict one: it refuses an ``X-Request-Id`` that is not a
UUID, so every test here also proves Anvil's upstream request id is one.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.engines.registration import register
from tests.engines.stream_timing import timed_chat_stream
from tests.support.engines import EnginePeer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(600)]

SERVE = "llama-cpp"
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
QUESTION = [{"role": "user", "content": "Describe the for statement."}]


@pytest.fixture
def direct(llama_cpp_engine: EnginePeer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_cpp_engine.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def oai(anvil: str, key: str, llama_cpp_engine: EnginePeer) -> openai.OpenAI:
    register(anvil, key, llama_cpp_engine, SERVE, engine="openai")
    return openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_answer_is_identical_direct_and_through_anvil(direct: openai.OpenAI, oai: openai.OpenAI,
                                                           llama_cpp_engine: EnginePeer) -> None:
    params = {**GREEDY, "messages": QUESTION, "max_tokens": 48}
    own = direct.chat.completions.create(model=llama_cpp_engine.served_model, **params)
    relayed = oai.chat.completions.create(model=SERVE, **params)
    assert relayed.choices[0].message.content == own.choices[0].message.content
    assert relayed.choices[0].finish_reason == own.choices[0].finish_reason
    assert relayed.usage == own.usage


def test_chat_stream_is_identical_direct_and_through_anvil_and_streams_as_made(
        direct: openai.OpenAI, oai: openai.OpenAI, llama_cpp_engine: EnginePeer) -> None:
    # 200 tokens: llama-cpp-python's streaming slows with the answer's length (400 took ten times as long).
    params = {**GREEDY, "messages": QUESTION, "max_tokens": 200}
    own = timed_chat_stream(direct, llama_cpp_engine.served_model, **params)
    relayed = timed_chat_stream(oai, SERVE, **params)
    # llama-cpp-python sends one chunk per token, as it makes them: the chunks themselves compare.
    assert relayed.contents == own.contents
    assert relayed.finish_reason == own.finish_reason == "length"
    assert len(own.contents) >= 100
    # The engine takes a while over 200 tokens; a relay that held the answer (a commit window over
    # the whole stream) would send its first chunk only after the engine finished, about when the
    # direct stream's last chunk came. Streamed, it comes about when the direct stream's first did.
    assert relayed.arrived[0] < own.arrived[-1] / 2 and relayed.spread > own.spread / 2, (
        f"content arrived {relayed.arrived[0]:.3f}..{relayed.arrived[-1]:.3f} s through Anvil, "
        f"{own.arrived[0]:.3f}..{own.arrived[-1]:.3f} s from the engine")


def test_completions_with_logprobs_and_echo_are_identical_direct_and_through_anvil(
        direct: openai.OpenAI, oai: openai.OpenAI, llama_cpp_engine: EnginePeer) -> None:
    params = {**GREEDY, "prompt": "The for statement is used", "max_tokens": 16, "logprobs": 3, "echo": True}
    settle(direct, llama_cpp_engine, **params)
    own = direct.completions.create(model=llama_cpp_engine.served_model, **params)
    relayed = oai.completions.create(model=SERVE, **params)
    assert own.choices[0].logprobs.tokens  # the engine did score them
    assert relayed.model_dump()["choices"] == own.model_dump()["choices"]
    assert relayed.usage == own.usage

    streamed = {key: value for key, value in params.items() if key != "echo"}
    settle(direct, llama_cpp_engine, **streamed)
    own_pieces = [choice.model_dump() for chunk in direct.completions.create(
        model=llama_cpp_engine.served_model, stream=True, **streamed) for choice in chunk.choices]
    relayed_pieces = [choice.model_dump() for chunk in oai.completions.create(
        model=SERVE, stream=True, **streamed) for choice in chunk.choices]
    assert relayed_pieces == own_pieces and own_pieces


def settle(direct: openai.OpenAI, engine: EnginePeer, **params: Any) -> None:
    """Ask once, so the two requests compared start from the same engine state. llama.cpp keeps the
    previous request's tokens and evaluates only what differs; the batches differ with what it kept,
    and with them the last bits of a logprob (seen: -6.877044200897217 after another prompt,
    -6.877043724060059 after the same one)."""
    direct.completions.create(model=engine.served_model, **params)
