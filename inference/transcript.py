"""A request body of any front-door dialect, and an answer, as plain text for a judge to read.

OpenAI chat (``messages``, parts or strings), completions (``prompt``), Anthropic messages
(``system`` and content blocks, tool use and results) and Responses (``instructions``, ``input``
as text or items), and the case inputs of eval suites (``{"prompt": …}``, ``{"messages": …}``).
Images are shown as ``[image]``: a judge reads text. Pure functions of the body: nothing is kept.
"""

from __future__ import annotations

import json
from typing import Any

from routing.verify import Answer


def _text_of(content: Any) -> str:
    """A message's content (a string, or parts / blocks of any dialect) as text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    pieces = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
            continue
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            pieces.append(str(part.get("text") or ""))
        elif kind in ("image", "image_url", "input_image"):
            pieces.append("[image]")
        elif kind == "tool_use":
            pieces.append(f"[calls {part.get('name')}({json.dumps(part.get('input'), ensure_ascii=False)})]")
        elif kind == "tool_result":
            pieces.append(f"[tool result: {_text_of(part.get('content'))}]")
    return "\n".join(piece for piece in pieces if piece)


def _message(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    role = str(message.get("role") or message.get("type") or "user")
    if message.get("type") == "function_call":
        return f"assistant: [calls {message.get('name')}({message.get('arguments')})]"
    if message.get("type") == "function_call_output":
        return f"tool: {message.get('output')}"
    text = _text_of(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = (call or {}).get("function") or {}
        text += f"\n[calls {function.get('name')}({function.get('arguments')})]"
    return f"{role}: {text.strip()}"


def request_text(body: dict[str, Any]) -> str:
    """The conversation a request carries, one ``role: text`` turn per paragraph."""
    turns = []
    for name in ("instructions", "system"):
        if body.get(name):
            turns.append(f"system: {_text_of(body[name])}")
    if body.get("title"):  # an eval case's title
        turns.append(f"title: {body['title']}")
    turns += [_message(message) for message in body.get("messages") or [] if isinstance(message, dict)]
    given = body.get("input")
    if isinstance(given, str):
        turns.append(f"user: {given}")
    elif isinstance(given, list):
        turns += [_message(item) for item in given]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        turns.append(prompt if body.get("title") else f"user: {prompt}")
    elif isinstance(prompt, list) and all(isinstance(piece, str) for piece in prompt):
        turns += [f"user: {piece}" for piece in prompt]
    return "\n\n".join(turn for turn in turns if turn.strip())


def answer_text(answer: Answer) -> str:
    """An answer reduced by the verifier's reducers (text, tool calls, finish reason) as text."""
    calls = "".join(f"\n[calls {name}({arguments})]" for name, arguments in answer.tool_calls)
    return (answer.text + calls).strip()
