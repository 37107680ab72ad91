"""Streaming on the wire: every upstream event is its own HTTP chunk; a client that leaves cancels the upstream."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from inference.keys import create_key
from serves.models import Serve
from tests.support.live import until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def http_chunks(url: str, path: str, key: str, body: dict) -> tuple[dict[str, str], list[bytes]]:
    """POST and return the response headers and its body split into HTTP/1.1 chunks, as sent."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
               ).encode() + payload
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as conn:
        conn.sendall(request)
        stream = conn.makefile("rb")
        status = stream.readline()
        assert b" 200 " in status, status
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers.get("transfer-encoding") == "chunked"
        chunks = []
        while True:
            size = int(stream.readline().strip(), 16)
            if size == 0:
                break
            chunks.append(stream.read(size))
            assert stream.read(2) == b"\r\n"
    return headers, chunks


@pytest.fixture
def setup(anvil: str, upstream: str) -> str:
    httpx.delete(f"{upstream}/_requests")
    allow_tiers("fast", "heavy")  # measured and trusted: relayed without a commit window
    Serve.objects.create(name="oa", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
    Serve.objects.create(name="an", tier="heavy", engine="anthropic", dialect="anthropic",
                         base_url=f"{upstream}/v1", served_model="claude-up")
    key = create_key("wire").secret
    until_routed(anvil, key, {"oa": "allow", "an": "allow"})
    return key


def test_same_dialect_stream_sends_each_upstream_event_as_its_own_chunk(anvil: str, setup: str) -> None:
    headers, chunks = http_chunks(anvil, "/v1/chat/completions", setup,
                                  {"model": "oa", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no" and headers["x-anvil-served-by"] == "oa"
    assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in chunks), chunks
    # role chunk, 8 deltas, finish chunk, [DONE]: as many chunks as the upstream sent events
    assert len(chunks) == 11 and chunks[-1] == b"data: [DONE]\n\n"


def test_translated_stream_sends_each_event_as_its_own_chunk(anvil: str, setup: str) -> None:
    _headers, chunks = http_chunks(anvil, "/v1/messages", setup, {
        "model": "oa", "max_tokens": 32, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    names = [chunk.split(b"\n", 1)[0] for chunk in chunks]
    assert all(chunk.count(b"\n\n") == 1 for chunk in chunks)
    assert names[0] == b"event: message_start" and names[-1] == b"event: message_stop"
    assert names.count(b"event: content_block_delta") == 8


def test_a_client_that_leaves_cancels_the_upstream_request_within_100_ms(anvil: str, upstream: str,
                                                                          setup: str) -> None:
    with httpx.Client(timeout=20) as client, client.stream(
            "POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {setup}"},
            json={"model": "oa", "stream": True, "messages": [{"role": "user", "content": "[[slow]]"}]}) as response:
        reader = response.iter_raw()
        next(reader)
        left_at = time.time()
    gone = wait_for(lambda: httpx.get(f"{upstream}/_disconnects").json(), 5, "the upstream to see the disconnect")
    assert gone[-1]["at"] - left_at < 0.1
