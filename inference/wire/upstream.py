"""The shape of what an upstream answers, checked before anything reads it.

An answer or stream event that its own dialect does not allow (``"choices": "abc"``, a delta that
is a string, ``data: [1,2,3]``, a token count that is not a count) is the upstream's failure: the
attempt falls back to the next candidate if nothing has reached the client yet, and otherwise
ends the stream with an error event. Never an exception deeper in the translators.
"""

from __future__ import annotations

from typing import Any

from inference.wire import UpstreamProtocolError
from inference.wire.shape import (
    INT32_MAX,
    Check,
    ShapeError,
    anything,
    fields,
    integer,
    list_of,
    mapping,
    string,
    tagged,
)

COUNT = integer(0, INT32_MAX)
OPENAI_USAGE = fields({"prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": integer(0)})
OPENAI_TOOL_CALL = fields({
    "index": integer(0, 1024), "id": string, "type": string,
    "function": fields({"name": string, "arguments": string}),
})
_REASONING = {"reasoning_content": string, "reasoning": string}
OPENAI_CHUNK = fields({
    "choices": list_of(fields({
        "index": integer(0, 1024), "text": string, "finish_reason": string, "logprobs": anything,
        "delta": fields({"content": string, "tool_calls": list_of(OPENAI_TOOL_CALL), **_REASONING}),
    })),
    "usage": OPENAI_USAGE,
})
OPENAI_ANSWER = fields({
    "choices": list_of(fields({
        "index": integer(0, 1024), "text": string, "finish_reason": string, "logprobs": anything,
        "message": fields({"content": string, "tool_calls": list_of(OPENAI_TOOL_CALL), **_REASONING}),
    })),
    "usage": OPENAI_USAGE,
}, required=["choices"])

ANTHROPIC_USAGE = fields({"input_tokens": COUNT, "output_tokens": COUNT, "cache_read_input_tokens": COUNT,
                          "cache_creation_input_tokens": COUNT})
ANTHROPIC_BLOCK = tagged({
    "text": fields({"text": string}),
    "tool_use": fields({"id": string, "name": string, "input": mapping}),
    "thinking": fields({"thinking": string}),
})
ANTHROPIC_EVENT = tagged({
    "message_start": fields({"message": fields({"usage": ANTHROPIC_USAGE, "content": list_of(mapping)})},
                            required=["message"]),
    "content_block_start": fields({"index": integer(0, 1024), "content_block": ANTHROPIC_BLOCK},
                                  required=["content_block"]),
    "content_block_delta": fields({"index": integer(0, 1024), "delta": tagged({
        "text_delta": fields({"text": string}, required=["text"]),
        "input_json_delta": fields({"partial_json": string}, required=["partial_json"]),
        "thinking_delta": fields({"thinking": string}),
    })}, required=["delta"]),
    "message_delta": fields({"delta": fields({"stop_reason": string}), "usage": ANTHROPIC_USAGE}),
    "error": fields({"error": mapping}),
})
ANTHROPIC_ANSWER = fields({
    "content": list_of(ANTHROPIC_BLOCK), "stop_reason": string, "usage": ANTHROPIC_USAGE,
}, required=["content"])

RESPONSES_USAGE = fields({"input_tokens": COUNT, "output_tokens": COUNT, "total_tokens": integer(0)})
RESPONSES_ITEM = tagged({
    "message": fields({"content": list_of(tagged({"output_text": fields({"text": string})}))}),
    "function_call": fields({"name": string, "arguments": string, "call_id": string}),
})
RESPONSES_ANSWER = fields({"output": list_of(RESPONSES_ITEM), "usage": RESPONSES_USAGE, "status": string,
                           "incomplete_details": fields({"reason": string})}, required=["output"])
_DELTA = fields({"delta": string, "output_index": integer(0, 1024)}, required=["delta"])
RESPONSES_EVENT = tagged({
    "response.output_text.delta": _DELTA, "response.function_call_arguments.delta": _DELTA,
    "response.reasoning_text.delta": _DELTA,
    "response.output_item.added": fields({"output_index": integer(0, 1024), "item": RESPONSES_ITEM},
                                         required=["item"]),
    "response.completed": fields({"response": RESPONSES_ANSWER}, required=["response"]),
    "response.incomplete": fields({"response": RESPONSES_ANSWER}, required=["response"]),
})

_EVENT_SHAPES = {"openai": OPENAI_CHUNK, "anthropic": ANTHROPIC_EVENT, "responses": RESPONSES_EVENT}
_ANSWER_SHAPES = {"openai": OPENAI_ANSWER, "anthropic": ANTHROPIC_ANSWER, "responses": RESPONSES_ANSWER}


def _check(shape: Check, payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise UpstreamProtocolError(f"the upstream sent {what} that is not a JSON object")
    try:
        shape(payload, "")
    except ShapeError as error:
        raise UpstreamProtocolError(f"the upstream sent {what} its dialect does not allow: {error.message}") from None
    return payload


def checked_event(payload: Any, dialect: str) -> dict[str, Any]:
    """One stream event's JSON, if its dialect allows it; else ``UpstreamProtocolError``."""
    return _check(_EVENT_SHAPES[dialect], payload, "a stream event")


def checked_answer(payload: Any, dialect: str) -> dict[str, Any]:
    """A whole answer's JSON, if its dialect allows it; else ``UpstreamProtocolError``."""
    return _check(_ANSWER_SHAPES[dialect], payload, "an answer")
