"""Request and whole-answer translation between the dialects, and SSE framing."""

from __future__ import annotations

import pytest

from inference.wire import DialectError, UpstreamProtocolError
from inference.wire.anthropic_client import request_to_openai, response_to_anthropic
from inference.wire.openai_client import request_to_anthropic, response_to_openai
from inference.wire.sse import SSEDecoder


def test_anthropic_request_becomes_openai() -> None:
    body = {
        "model": "fast", "max_tokens": 100, "stop_sequences": ["END"], "temperature": 0.2,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "..."}, {"type": "text", "text": "ok"},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                          "content": [{"type": "text", "text": "boom"}]}]},
        ],
    }
    out = request_to_openai(body, "served")
    assert out["model"] == "served" and out["stop"] == ["END"] and out["max_tokens"] == 100
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["parallel_tool_calls"] is False
    assert out["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                              "description": "d"}}]
    system, user, assistant, tool = out["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    assert user["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert assistant == {"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "[tool error] boom"}
    assert "stream" not in out


def test_streaming_anthropic_request_asks_the_openai_upstream_for_usage() -> None:
    out = request_to_openai({"model": "m", "max_tokens": 5, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]}, "m")
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")])
def test_tool_choice_anthropic_to_openai(choice: dict, expected: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
            "tools": [{"name": "f", "input_schema": {}}]}
    assert request_to_openai(body, "m")["tool_choice"] == expected


def test_server_tools_have_no_openai_equivalent() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    with pytest.raises(DialectError) as caught:
        request_to_openai(body, "m")
    assert caught.value.param == "tools[0]"


def test_openai_request_becomes_anthropic() -> None:
    body = {
        "model": "claude", "stop": "END", "user": "u1", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        ],
    }
    out = request_to_anthropic(body, "claude-up", 4096)
    assert out["system"] == "A\n\nB" and out["max_tokens"] == 4096 and out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u1"}
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert out["messages"] == [{"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                                         "url": "https://x/y.png"}}]}]


def test_openai_tool_arguments_that_are_not_json_are_refused_naming_the_field() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                              "function": {"name": "f", "arguments": "{oops"}}]}]}
    with pytest.raises(DialectError) as caught:
        request_to_anthropic(body, "m", 10)
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_several_choices_cannot_be_asked_of_an_anthropic_upstream() -> None:
    with pytest.raises(DialectError) as caught:
        request_to_anthropic({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}, "m", 10)
    assert caught.value.param == "n"


def test_whole_answers_translate_both_ways() -> None:
    openai_answer = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    message = response_to_anthropic(openai_answer, "fast")
    assert message["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}}]  # no empty text
    assert message["stop_reason"] == "tool_use" and message["usage"] == {"input_tokens": 3, "output_tokens": 4}
    anthropic_answer = {"type": "message", "content": [{"type": "text", "text": "hi"}], "stop_reason": "max_tokens",
                        "usage": {"input_tokens": 2, "output_tokens": 9}}
    completion = response_to_openai(anthropic_answer, "claude")
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 9, "total_tokens": 11}


def test_invalid_tool_json_from_an_upstream_is_an_upstream_error() -> None:
    answer = {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]}}]}
    with pytest.raises(UpstreamProtocolError, match="not valid JSON"):
        response_to_anthropic(answer, "m")


def test_sse_decoder_keeps_events_whole_across_reads() -> None:
    decoder = SSEDecoder()
    stream = b"event: a\ndata: 1\n\n: keep-alive\n\ndata: 2\r\n\r\ndata: x\ndata: y\n\n"
    events = [event for i in range(len(stream)) for event in decoder.feed(stream[i:i + 1])]
    assert [(e.event, e.data) for e in events] == [("a", "1"), (None, "2"), (None, "x\ny")]
    assert events[0].raw == b"event: a\ndata: 1\n\n"
    decoder.feed(b"data: tail")
    assert decoder.close().data == "tail"
