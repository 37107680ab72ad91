"""Request shapes of the front door's endpoints: parse and validate, naming the field at fault.

Only what Anvil itself relies on is checked; every other field travels to the
upstream untouched (tools, tool_choice, vendor extensions).
"""

from __future__ import annotations

import json
from typing import Any

from inference.errors import InvalidRequest

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ANTHROPIC_ROLES = frozenset({"user", "assistant"})


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value


def _optional(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InvalidRequest(f"'{name}' must be {what}.", param=name)


def _number_in(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}.", param=name)


def _positive_int(body: dict[str, Any], name: str, required: bool = False) -> None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required.", param=name)
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)


def _model(body: dict[str, Any]) -> None:
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidRequest("'model' must be a string: a serve name, a served model name, or 'auto'.",
                             param="model")


def _messages(body: dict[str, Any], roles: frozenset[str]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", param=f"messages[{index}]")
        if message.get("role") not in roles:
            raise InvalidRequest(f"'role' must be one of {', '.join(sorted(roles))}.",
                                 param=f"messages[{index}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest("'content' must be a string or a list of parts.", param=f"messages[{index}].content")


def validate_chat(body: dict[str, Any]) -> None:
    _model(body)
    _messages(body, OPENAI_ROLES)
    _optional(body, "stream", (bool,), "a boolean")
    _optional(body, "stream_options", (dict,), "an object")
    _optional(body, "tools", (list,), "a list")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    _positive_int(body, "n")
    _number_in(body, "temperature", 0, 2)
    _number_in(body, "top_p", 0, 1)


def validate_completion(body: dict[str, Any]) -> None:
    _model(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
        raise InvalidRequest("'prompt' must be a string or a non-empty list.", param="prompt")
    _optional(body, "stream", (bool,), "a boolean")
    _positive_int(body, "max_tokens")
    _number_in(body, "temperature", 0, 2)
    _number_in(body, "top_p", 0, 1)


def validate_messages(body: dict[str, Any]) -> None:
    _model(body)
    _positive_int(body, "max_tokens", required=True)
    _messages(body, ANTHROPIC_ROLES)
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequest("'system' must be a string or a list of text blocks.", param="system")
    _optional(body, "stream", (bool,), "a boolean")
    _optional(body, "tools", (list,), "a list")
    _optional(body, "tool_choice", (dict,), "an object")
    _optional(body, "stop_sequences", (list,), "a list of strings")
    _number_in(body, "temperature", 0, 1)
    _number_in(body, "top_p", 0, 1)
