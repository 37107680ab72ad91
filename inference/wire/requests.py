"""Request shapes of the front door's endpoints: parse and validate, naming the field at fault.

Every field that Anvil itself reads (routing, translation, verification) is checked here, before
any of that code runs, so a malformed body is a 400 in the client's dialect and never an exception
deeper in. Fields Anvil does not read travel to the upstream untouched (vendor extensions).
"""

from __future__ import annotations

import json
import re
from typing import Any

from inference.errors import InvalidRequest
from inference.wire.shape import (
    INT32_MAX,
    Check,
    ShapeError,
    anything,
    boolean,
    by_kind,
    fields,
    integer,
    list_of,
    mapping,
    number,
    one_of,
    string,
    tagged,
)

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ANTHROPIC_ROLES = frozenset({"user", "assistant"})
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
# A UTF-16 surrogate written as UTF-8 bytes (ED A0..BF ..): not UTF-8, yet json.loads decodes bytes with
# "surrogatepass" and lets it through, to fail later where the upstream body is encoded (a 500).
_ENCODED_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
# How deep a body may nest (serde_json's default): far past any real request, and far short of Python's
# recursion limit, which a body that only just parsed could reach later, when Anvil encodes it again (the
# surrogate check below, the upstream body, a Responses stream's echo of it: a 500, or an empty stream).
MAX_NESTING = 128


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    if _ENCODED_SURROGATE.search(body) and json.detect_encoding(body).startswith("utf-8"):
        raise InvalidRequest("The request body is not valid JSON: it is not valid UTF-8 (it holds a UTF-16 "
                             "surrogate written as UTF-8 bytes).")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise InvalidRequest(f"The request body has a value Anvil cannot read: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if body.count(b"{") + body.count(b"[") > MAX_NESTING and _nesting(value) > MAX_NESTING:
        raise InvalidRequest(f"The request body is nested more than {MAX_NESTING} levels deep.")
    if _ESCAPED_SURROGATE.search(body):
        _refuse_lone_surrogates(value)
    return value


def _nesting(value: Any) -> int:
    """How deep ``value`` nests (the body's object is 1), a level at a time (no recursion, and about a tenth of
    json.loads's own time on a 10,000-message body); stops counting past MAX_NESTING."""
    level, depth = [value], 0
    while level and depth <= MAX_NESTING:
        depth += 1
        level = [child for node in level for child in (node.values() if type(node) is dict else node)
                 if type(child) is dict or type(child) is list]
    return depth


def _refuse_lone_surrogates(value: dict[str, Any]) -> None:
    """A ``\\ud800`` escape with no partner parses to a string no encoder can write: refuse it here.

    Paired escapes (an emoji written as two) parse to one character and pass.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("The request body holds a lone UTF-16 surrogate escape (such as \\ud800), "
                             "which is not valid Unicode.") from None


def _checked(check: Check, body: dict[str, Any]) -> None:
    try:
        check(body, "")
    except ShapeError as error:
        raise InvalidRequest(error.message, param=error.where) from None


# --- pieces both OpenAI endpoints share ------------------------------------------------------------

MAX_TOKENS = integer(1, INT32_MAX)
STOP = by_kind({str: string, list: list_of(string)}, "a string or a list of strings")
SAMPLING: dict[str, Check] = {
    "model": string, "stream": boolean, "stream_options": fields({"include_usage": boolean}),
    "max_tokens": MAX_TOKENS, "n": integer(1, 128), "temperature": number(0, 2), "top_p": number(0, 1),
    "top_k": integer(-1, INT32_MAX), "min_p": number(0, 1), "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2), "repetition_penalty": number(0, 100, low_open=True),
    "seed": integer(), "stop": STOP, "user": string, "logit_bias": mapping, "metadata": mapping,
}

# --- OpenAI chat ---------------------------------------------------------------------------------

_IMAGE_URL = by_kind({str: string, dict: fields({"url": string, "detail": string}, required=["url"])},
                     "a URL or an object with a url")
OPENAI_PART = tagged({
    "text": fields({"text": string}, required=["text"]),
    "image_url": fields({"image_url": _IMAGE_URL}, required=["image_url"]),
    "input_audio": fields({"input_audio": mapping}),
    "file": fields({"file": mapping}),
})
OPENAI_CONTENT = by_kind({str: string, list: list_of(OPENAI_PART)}, "a string or a list of content parts")
OPENAI_TOOL_CALL = fields({
    "id": string, "type": string,
    "function": fields({"name": string, "arguments": string}),
})
OPENAI_MESSAGE = fields({
    "role": one_of(*OPENAI_ROLES), "content": OPENAI_CONTENT, "name": string,
    "tool_calls": list_of(OPENAI_TOOL_CALL), "tool_call_id": string, "reasoning_content": string,
    "reasoning": string, "refusal": string,
}, required=["role"])
OPENAI_TOOL = fields({
    "type": string,
    "function": fields({"name": string, "description": string, "parameters": mapping, "strict": boolean},
                       required=["name"]),
})
OPENAI_TOOL_CHOICE = by_kind({
    str: one_of("none", "auto", "required"),
    dict: fields({"type": string, "function": fields({"name": string}, required=["name"])}, required=["type"]),
}, "none, auto, required or an object naming a function")
RESPONSE_FORMAT = tagged({"json_schema": fields({"json_schema": mapping})})

CHAT = fields({
    **SAMPLING,
    "messages": list_of(OPENAI_MESSAGE, min_items=1),
    "max_completion_tokens": MAX_TOKENS,
    "tools": list_of(OPENAI_TOOL), "tool_choice": OPENAI_TOOL_CHOICE, "parallel_tool_calls": boolean,
    "logprobs": boolean, "top_logprobs": integer(0, 20), "response_format": RESPONSE_FORMAT,
    "reasoning_effort": string, "reasoning": fields({"effort": string, "summary": string}),
    "chat_template_kwargs": mapping,
}, required=["messages"])

# --- OpenAI completions ------------------------------------------------------------------------

_TOKEN_ID = integer(0, INT32_MAX)


def _prompt(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise ShapeError(where, "must be a string or a non-empty list.")
    first = value[0]
    if isinstance(first, str):
        list_of(string)(value, where)
    elif isinstance(first, list):
        list_of(list_of(_TOKEN_ID, min_items=1))(value, where)
    else:
        list_of(_TOKEN_ID)(value, where)


COMPLETION = fields({
    **SAMPLING,
    "prompt": _prompt, "echo": boolean, "logprobs": integer(0, 20), "suffix": string, "best_of": integer(1, 128),
}, required=["prompt"])

# --- Anthropic messages -----------------------------------------------------------------------

IMAGE_SOURCE = tagged({
    "base64": fields({"media_type": string, "data": string}, required=["data"]),
    "url": fields({"url": string}, required=["url"]),
}, others=False)
TEXT_BLOCK = fields({"text": string, "cache_control": mapping}, required=["text"])


def _tool_result_content(value: Any, where: str) -> None:
    ANTHROPIC_CONTENT(value, where)


ANTHROPIC_BLOCK = tagged({
    "text": TEXT_BLOCK,
    "image": fields({"source": IMAGE_SOURCE}, required=["source"]),
    "tool_use": fields({"id": string, "name": string, "input": mapping}, required=["name"]),
    "tool_result": fields({"tool_use_id": string, "content": _tool_result_content, "is_error": boolean},
                          required=["tool_use_id"]),
    "thinking": fields({"thinking": string, "signature": string}),
    "redacted_thinking": fields({"data": string}),
    "document": fields({"source": mapping}),
})
ANTHROPIC_CONTENT = by_kind({str: string, list: list_of(ANTHROPIC_BLOCK)}, "a string or a list of content blocks")
ANTHROPIC_MESSAGE = fields({"role": one_of(*ANTHROPIC_ROLES), "content": ANTHROPIC_CONTENT},
                           required=["role", "content"])
ANTHROPIC_TOOL = fields({"name": string, "description": string, "input_schema": mapping, "type": string},
                        required=["name"])
ANTHROPIC_TOOL_CHOICE = tagged({
    "auto": fields({"disable_parallel_tool_use": boolean}),
    "any": fields({"disable_parallel_tool_use": boolean}),
    "none": anything,
    "tool": fields({"name": string, "disable_parallel_tool_use": boolean}, required=["name"]),
}, others=False)
THINKING = tagged({
    "enabled": fields({"budget_tokens": integer(1, INT32_MAX)}, required=["budget_tokens"]),
    "disabled": anything,
    "adaptive": anything,
}, others=False)

MESSAGES_SYSTEM = by_kind({str: string, list: list_of(tagged({"text": TEXT_BLOCK}, others=False))},
                          "a string or a list of text blocks")
MESSAGES = fields({
    "model": string, "max_tokens": MAX_TOKENS,
    "messages": list_of(ANTHROPIC_MESSAGE, min_items=1),
    "system": MESSAGES_SYSTEM,
    "stream": boolean, "tools": list_of(ANTHROPIC_TOOL), "tool_choice": ANTHROPIC_TOOL_CHOICE,
    "stop_sequences": list_of(string), "temperature": number(0, 1), "top_p": number(0, 1),
    "top_k": integer(0, INT32_MAX), "metadata": fields({"user_id": string}), "thinking": THINKING,
    "service_tier": string,
}, required=["max_tokens", "messages"])


def validate_chat(body: dict[str, Any]) -> None:
    _checked(CHAT, body)


def validate_completion(body: dict[str, Any]) -> None:
    _checked(COMPLETION, body)


def validate_messages(body: dict[str, Any]) -> None:
    _checked(MESSAGES, body)


COUNT_TOKENS = fields({"model": string, "messages": list_of(ANTHROPIC_MESSAGE, min_items=1),
                       "system": MESSAGES_SYSTEM, "tools": list_of(ANTHROPIC_TOOL),
                       "tool_choice": ANTHROPIC_TOOL_CHOICE, "thinking": THINKING}, required=["messages"])


def validate_count_tokens(body: dict[str, Any]) -> None:
    _checked(COUNT_TOKENS, body)


# --- OpenAI Responses (and llm-pool's shape of it) -----------------------------------------------

RESPONSE_PART = tagged({
    "input_text": TEXT_BLOCK, "output_text": TEXT_BLOCK, "text": TEXT_BLOCK,
    "input_image": fields({"image_url": string, "detail": string, "file_id": string}),
    "image_url": fields({"image_url": _IMAGE_URL}, required=["image_url"]),
    "refusal": fields({"refusal": string}),
})
RESPONSE_CONTENT = by_kind({str: string, list: list_of(RESPONSE_PART)}, "a string or a list of content parts")
_RESPONSE_MESSAGE = fields({"role": one_of("user", "assistant", "system", "developer"), "content": RESPONSE_CONTENT},
                           required=["role", "content"])
_RESPONSE_ITEM = tagged({
    "message": _RESPONSE_MESSAGE,
    "function_call": fields({"call_id": string, "name": string, "arguments": string},
                            required=["call_id", "name", "arguments"]),
    "function_call_output": fields({"call_id": string, "output": RESPONSE_CONTENT}, required=["call_id", "output"]),
    "input_text": TEXT_BLOCK, "text": TEXT_BLOCK,
    "input_image": fields({"image_url": string, "detail": string, "file_id": string}),
    "image_url": fields({"image_url": _IMAGE_URL}, required=["image_url"]),
})


def _response_item(value: Any, where: str) -> None:
    if isinstance(value, dict) and "type" not in value:
        _RESPONSE_MESSAGE(value, where)  # an "easy" input message: role and content, no type
    else:
        _RESPONSE_ITEM(value, where)


RESPONSE_TOOL = tagged({"function": fields({"name": string, "description": string, "parameters": mapping,
                                            "strict": boolean}, required=["name"])})
RESPONSES = fields({
    "model": string, "stream": boolean, "instructions": string,
    "input": by_kind({str: string, list: list_of(_response_item, min_items=1)}, "a string or a list of input items"),
    "messages": list_of(fields({"role": one_of("user", "assistant"), "content": RESPONSE_CONTENT},
                               required=["role", "content"]), min_items=1),
    "tools": list_of(RESPONSE_TOOL),
    "tool_choice": by_kind({str: one_of("none", "auto", "required"),
                            dict: tagged({"function": fields({"name": string}, required=["name"])})},
                           "none, auto, required or an object naming a function"),
    "parallel_tool_calls": boolean, "max_output_tokens": MAX_TOKENS, "temperature": number(0, 2),
    "top_p": number(0, 1), "user": string, "metadata": mapping,
    "text": fields({"format": tagged({"json_schema": fields({"name": string, "schema": mapping, "strict": boolean}),
                                      "json_object": anything, "text": anything})}),
    "reasoning": fields({"effort": string, "summary": string}),
    "decoding": fields({"temperature": number(0, 2), "top_p": number(0, 1), "top_k": integer(-1, INT32_MAX),
                        "max_tokens": MAX_TOKENS, "stop": list_of(string),
                        "repetition_penalty": number(0, 100, low_open=True), "beam_size": integer(1, 64)}),
    "allow_remote": boolean, "thinking": one_of("default", "enabled", "disabled"),
    "store": boolean, "background": boolean, "previous_response_id": string,
})
_STATELESS = ("Anvil keeps no prompt text at rest, so it cannot store or chain responses; send the whole "
              "conversation in 'input' instead.")


def validate_responses(body: dict[str, Any]) -> None:
    _checked(RESPONSES, body)
    if body.get("input") is None and body.get("messages") is None:
        raise InvalidRequest("Send 'input' (a string or a list of items), or llm-pool's 'messages'.", param="input")
    if body.get("store") is True:
        raise InvalidRequest("'store': true is not supported. " + _STATELESS, param="store", code="unsupported_value")
    if body.get("previous_response_id") is not None or body.get("conversation") is not None:
        param = "previous_response_id" if body.get("previous_response_id") is not None else "conversation"
        raise InvalidRequest(f"'{param}' is not supported. " + _STATELESS, param=param, code="unsupported_value")
    if body.get("background") is True:
        raise InvalidRequest("'background': true is not supported: Anvil answers while the client waits.",
                             param="background", code="unsupported_value")


# What routing reads of a body of either dialect: /v1/route takes both.
ROUTE = fields({
    "model": string, "prompt": _prompt, "system": by_kind({str: string, list: list_of(mapping)}, "a string or a list"),
    "messages": list_of(fields({"role": string, "content": by_kind({str: string, list: list_of(mapping)},
                                                                   "a string or a list of parts")},
                               required=["role"])),
    "tools": list_of(mapping), "thinking": mapping, "reasoning_effort": string, "reasoning": mapping,
})


def validate_route(body: dict[str, Any]) -> None:
    if "messages" not in body and "prompt" not in body:
        raise InvalidRequest("Send the body you would send to /v1/chat/completions or /v1/messages.",
                             param="messages")
    _checked(ROUTE, body)
