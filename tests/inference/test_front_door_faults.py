"""Faults a probe of the landed stack found in the front door, each as a regression test.

Anvil runs as the launcher starts it (its default web server), with short clocks; the upstreams are
scripted processes that misbehave the way broken engines do. The body bounds are held under each
server, since each enforces them in its own place (uvicorn: ``anvil_site/body_bounds.py``; Daphne:
``anvil_site/webserver.py``).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MAX_BODY = 65536


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT="1.5") as url:
        yield url


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def bounded(request: pytest.FixtureRequest, django_db_setup: None, module_logs: Path) -> Iterator[str]:
    """Anvil under each web server, with the body clock and cap short."""
    with live_anvil(module_logs, server=request.param, ANVIL_BODY_TIMEOUT="2",
                    ANVIL_MAX_BODY_BYTES=str(MAX_BODY)) as url:
        yield url


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    """Misbehaves as the prompt's [[marker]] says."""
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture
def key() -> str:
    return create_key(f"faults-{uuid.uuid4().hex[:6]}").secret


def one_serve(anvil: str, key: str, url: str, verdict: str = "allow") -> str:
    """The only serve (nothing to fall back to), with a measured verdict."""
    name = f"s-{uuid.uuid4().hex[:6]}"
    Serve.objects.create(name=name, tier="fast", base_url=f"{url}/v1", served_model="m")
    allow_tiers("fast", decision=verdict)
    until_routed(anvil, key, {name: verdict})
    return name


def record_for(request_id: str) -> DecisionRecord:
    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    return wait_for(written, 10, "the decision record to be written")


def chat(anvil: str, key: str, content: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=20,
                      json={"model": "auto", "messages": [{"role": "user", "content": content}], **extra})


# --- nothing escapes a consumer, before or after the headers ----------------------------------


def test_a_body_cut_after_the_headers_ends_the_response_and_the_next_request_is_answered(
        anvil: str, key: str, upstream: str) -> None:
    one_serve(anvil, key, upstream)  # allowed, and still read whole before the client gets a byte
    started = time.monotonic()
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "[[shortbody]]"}]},
                      timeout=20) as cut:
        assert cut.status_code == 502  # the only serve: a clean error, never half a JSON body
        body = b"".join(cut.iter_raw())
    assert time.monotonic() - started < 10  # the response ended; the client was not left waiting
    assert "connection broke" in json.loads(body)["error"]["message"]
    record = record_for(cut.headers["x-request-id"])
    assert record.outcome == "error" and record.attempts[0]["outcome"] == "unreachable"
    # The process still answers errors and requests, promptly.
    surrogate = httpx.post(f"{anvil}/v1/completions", headers={"authorization": f"Bearer {key}"}, timeout=5,
                           content=b'{"model": "auto", "prompt": "a\\ud800"}')
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["error"]["message"]
    assert chat(anvil, key, "hello").status_code == 200


def test_malformed_chunks_translated_for_an_anthropic_client_end_with_an_error_event(
        anvil: str, key: str, upstream: str) -> None:
    name = one_serve(anvil, key, upstream)
    client = anthropic.Anthropic(base_url=anvil, api_key=key, max_retries=0, timeout=20)
    for marker in ("badchoices", "baddelta", "arraydata"):
        texts: list[str] = []
        with pytest.raises(anthropic.APIStatusError, match="failed mid-stream"):
            with client.messages.stream(model=name, max_tokens=32,
                                        messages=[{"role": "user", "content": f"[[{marker}]]"}]) as stream:
                texts.extend(stream.text_stream)
        assert texts == ["ok "]  # what came before the fault was delivered


def test_a_serve_silent_mid_stream_is_cut_by_the_inter_token_timeout(anvil: str, key: str, upstream: str) -> None:
    one_serve(anvil, key, upstream)
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=60)
    started = time.monotonic()
    received = []
    with pytest.raises(openai.APIError, match="INTER_TOKEN_TIMEOUT"):
        for chunk in client.chat.completions.create(model="auto", stream=True,
                                                    messages=[{"role": "user", "content": "[[hang]]"}]):
            received.append(chunk)
    assert received and time.monotonic() - started < 10  # 1.5 s of silence, not the client's own 60 s


def test_a_client_that_leaves_mid_stream_is_recorded_with_what_it_was_sent(
        anvil: str, key: str, upstream: str) -> None:
    name = one_serve(anvil, key, upstream)
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "[[hang]]"}]},
                      timeout=20) as stream:
        for line in stream.iter_lines():
            if "then nothing" in line:
                break  # the first token arrived: leave while the serve is still answering
        request_id = stream.headers["x-request-id"]
    record = record_for(request_id)
    assert (record.outcome, record.status, record.served_by) == ("client-gone", 499, name)
    assert record.ttft_ms is not None and record.bytes_out > 0
    assert record.attempts[-1]["serve"] == name and record.attempts[-1]["outcome"] == "client-gone"


# --- malformed upstream answers are the upstream's failure ---------------------------------------


@pytest.mark.parametrize(("fault", "stream"), [("badchoices", True), ("baddelta", True), ("badusage", False)])
def test_malformed_upstream_answers_on_the_verified_path_fall_back(anvil: str, key: str, module_logs: Path,
                                                                  fault: str, stream: bool) -> None:
    with scripted_upstream(module_logs, force_scenario=fault) as bad, scripted_upstream(module_logs) as good:
        first, second = f"bad-{uuid.uuid4().hex[:6]}", f"good-{uuid.uuid4().hex[:6]}"
        Serve.objects.create(name=first, tier="fast", base_url=f"{bad}/v1", served_model="bad")
        Serve.objects.create(name=second, tier="heavy", base_url=f"{good}/v1", served_model="good")
        allow_tiers("fast", "heavy", decision="allow-with-verify")
        until_routed(anvil, key, {first: "allow-with-verify", second: "allow-with-verify"})
        answer = chat(anvil, key, "hello", stream=stream)
    assert answer.status_code == 200 and answer.headers["x-anvil-served-by"] == second
    attempts = record_for(answer.headers["x-request-id"]).attempts
    assert [a["outcome"] for a in attempts] == ["fallback", "served"]


def test_an_unverified_stream_never_relays_a_non_object_event(anvil: str, key: str, upstream: str) -> None:
    one_serve(anvil, key, upstream)
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      timeout=20, json={"model": "auto", "stream": True,
                                        "messages": [{"role": "user", "content": "[[arraydata]]"}]}) as response:
        text = response.read().decode()
    assert "[1, 2, 3]" not in text
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "ok "
    assert "failed mid-stream" in json.loads(events[-1])["error"]["message"]


# --- a serve's own limits, and errors it words badly ----------------------------------------------


def test_a_context_limit_refusal_falls_back_to_the_next_serve(anvil: str, key: str, module_logs: Path) -> None:
    with scripted_upstream(module_logs, force_scenario="error400") as small, \
            scripted_upstream(module_logs) as big:
        first, second = f"small-{uuid.uuid4().hex[:6]}", f"big-{uuid.uuid4().hex[:6]}"
        Serve.objects.create(name=first, tier="fast", base_url=f"{small}/v1", served_model="small")
        Serve.objects.create(name=second, tier="heavy", base_url=f"{big}/v1", served_model="big")
        allow_tiers("fast", "heavy")
        until_routed(anvil, key, {first: "allow", second: "allow"})
        answer = chat(anvil, key, "hello")
    assert answer.status_code == 200 and answer.headers["x-anvil-served-by"] == second
    attempts = record_for(answer.headers["x-request-id"]).attempts
    assert [(a["serve"], a["outcome"], a["status"]) for a in attempts] == [(first, "fallback", 400),
                                                                          (second, "served", 200)]


def test_a_context_limit_refusal_from_the_only_serve_is_the_clients_400(anvil: str, key: str,
                                                                       upstream: str) -> None:
    one_serve(anvil, key, upstream)
    answer = chat(anvil, key, "[[error400]]")
    assert answer.status_code == 400 and "maximum context length" in answer.json()["error"]["message"]


def test_an_empty_upstream_error_is_told_in_the_clients_dialect(anvil: str, key: str, upstream: str) -> None:
    name = one_serve(anvil, key, upstream)
    answer = chat(anvil, key, "[[empty400]]")
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert name in message and "HTTP 400" in message and "(empty body)" in message
    anthropic_answer = httpx.post(f"{anvil}/v1/messages", headers={"x-api-key": key}, timeout=20, json={
        "model": name, "max_tokens": 8, "messages": [{"role": "user", "content": "[[empty400]]"}]})
    assert anthropic_answer.status_code == 400 and anthropic_answer.json()["type"] == "error"


def test_the_request_id_sent_upstream_is_a_uuid(anvil: str, key: str, upstream: str) -> None:
    one_serve(anvil, key, upstream)
    httpx.delete(f"{upstream}/_requests")
    answer = httpx.post(f"{anvil}/v1/chat/completions", timeout=20,
                        headers={"authorization": f"Bearer {key}", "x-request-id": "my-trace-7"},
                        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "my-trace-7"
    sent = {k.lower(): v for k, v in httpx.get(f"{upstream}/_requests").json()[-1]["headers"].items()}
    assert str(uuid.UUID(sent["x-request-id"])) == sent["x-request-id"]  # llama.cpp's server takes nothing else


# --- bodies: refused from their headers, and never trickled ----------------------------------------


def raw_request(anvil: str, head: bytes, body: bytes = b"", wait: float = 10) -> bytes:
    """Everything the server answers until it closes the connection."""
    host, port = anvil.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(head + body)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            # A server that closes with part of the body still unread resets the connection (its kernel
            # does); uvicorn stops reading at 64 KiB buffered, so this comes after its answer, at times.
            assert answer, "the connection was reset before any answer"
        return answer


def test_a_declared_oversized_body_is_refused_before_it_is_read(bounded: str, key: str) -> None:
    head = (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-api-key: " + key.encode() + b"\r\ncontent-length: 1073741824\r\n\r\n")
    started = time.monotonic()
    answer = raw_request(bounded, head)  # the body is never sent: the answer must not wait for it
    assert time.monotonic() - started < 5  # answered, and the connection closed
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["type"] == "request_too_large"  # Anthropic's shape on its path


def test_a_chunked_body_past_the_cap_is_refused_while_it_arrives(bounded: str, key: str) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key.encode() + b"\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer = raw_request(bounded, head, chunk * 6)  # never the closing zero-length chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"  # OpenAI's shape elsewhere


def test_a_trickled_body_is_cut_at_the_body_deadline(bounded: str, key: str) -> None:
    host, port = bounded.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
                           b"authorization: Bearer " + key.encode() + b"\r\n\r\n{")
        answer = b""
        try:
            while time.monotonic() - started < 12:
                connection.sendall(b" ")  # a byte every half second: never enough to finish
                connection.settimeout(0.5)
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 6  # ANVIL_BODY_TIMEOUT=2
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
