"""Golden streams: real-shaped upstream event sequences and the exact client sequences they must become."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from inference.wire.anthropic_client import StreamToAnthropic
from inference.wire.openai_client import StreamToOpenAI
from inference.wire.sse import SSEDecoder, encode

GOLDENS = sorted((Path(__file__).parent / "goldens").glob("*.json"))


def upstream_bytes(golden: dict[str, Any]) -> bytes:
    out = b""
    for item in golden["upstream"]:
        if golden["direction"].startswith("openai"):
            out += encode(item)
        else:
            out += encode(item[1], item[0])
    return out


def run(golden: dict[str, Any]) -> list[Any]:
    """Feed the upstream bytes in awkward slices (as TCP would) and collect what the client gets."""
    openai_upstream = golden["direction"].startswith("openai")
    translator: Any = (StreamToAnthropic(golden["client_model"]) if openai_upstream
                       else StreamToOpenAI(golden["client_model"], golden.get("include_usage", False)))
    raw, decoder, sent = upstream_bytes(golden), SSEDecoder(), []
    for start in range(0, len(raw), 7):
        for event in decoder.feed(raw[start:start + 7]):
            if event.data == "[DONE]":
                sent += translator.finish()
            else:
                sent += translator.feed(event.json())
    sent += translator.finish()
    client = SSEDecoder()
    events = [event for chunk in sent for event in client.feed(chunk)]
    assert len(events) == len(sent), "every output chunk holds exactly one event"
    if openai_upstream:
        return [[event.event, normalise(event.json())] for event in events]
    return [event.data if event.data == "[DONE]" else normalise(event.json()) for event in events]


def normalise(payload: Any) -> Any:
    text = json.dumps(payload)
    text = re.sub(r'"msg_[0-9a-f]{24}"', '"<msg>"', text)
    text = re.sub(r'"chatcmpl-[0-9a-f]{24}"', '"<chatcmpl>"', text)
    text = re.sub(r'"created": \d+', '"created": 0', text)
    return json.loads(text)


@pytest.mark.parametrize("path", GOLDENS, ids=[path.stem for path in GOLDENS])
def test_golden_stream(path: Path) -> None:
    golden = json.loads(path.read_text())
    assert run(golden) == golden["expected"], golden["about"]


def test_there_are_goldens_for_both_directions() -> None:
    directions = {json.loads(path.read_text())["direction"] for path in GOLDENS}
    assert directions == {"openai-upstream/anthropic-client", "anthropic-upstream/openai-client"}
