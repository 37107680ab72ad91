"""The HRM worker as a good upstream: it stops decoding for a client that left, detokenizes incrementally,
truncates from the left when asked, counts chat tokens with its template, and logs one line per request."""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inference.hrm.checkpoint import load_checkpoint
from inference.hrm.engine import SamplingParams, Sequence
from inference.hrm.sampling import cut_at_stop
from tests.support.live import DEMO_CHECKPOINT, hrm_worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

CONTEXT = 512  # the demo model's


@pytest.fixture(scope="module")
def worker(module_logs: Path) -> Iterator[tuple[str, Path]]:
    with hrm_worker(module_logs) as (port, _process):
        yield f"http://127.0.0.1:{port}", next(module_logs.glob(f"hrm-{port}.log"))


def generated_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(re.search(r"^hrm_generated_tokens_total (\S+)$", text, re.MULTILINE).group(1))


def test_incremental_detokenization_equals_decoding_the_whole_output() -> None:
    _, tokenizer = load_checkpoint(DEMO_CHECKPOINT)
    rng = random.Random(7)
    for stops in ((), ("e t", "\n\n")):
        tokens = [rng.randrange(tokenizer.get_vocab_size()) for _ in range(300)]
        sequence = Sequence([1], SamplingParams(max_tokens=300, stop=stops))
        for token in tokens:
            sequence.append(token, tokenizer, eos_id=None)
            if sequence.finished:
                break
        whole, stopped = cut_at_stop(tokenizer.decode(sequence.output), list(stops))
        assert sequence.text == whole and (sequence.finish_reason == "stop") == stopped


def test_a_stream_whose_client_left_stops_decoding(worker: tuple[str, Path]) -> None:
    url, _ = worker
    before = generated_total(url)
    host, port = url.removeprefix("http://").split(":")
    body = (b'{"prompt": "def", "max_tokens": 400, "temperature": 0, "ignore_eos": true, "stream": true}')
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b"data: " not in received:  # the stream has begun
            received += connection.recv(65536)
    # The sequence ends at its next token once the write fails; its tokens are counted when it ends.
    counted = wait_for(lambda: generated_total(url) > before and generated_total(url), 30, "the sequence to end")
    assert counted - before < 400


def test_a_whole_answer_whose_client_left_stops_decoding(worker: tuple[str, Path]) -> None:
    url, _ = worker
    before = generated_total(url)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/generate", timeout=0.5,
                   json={"prompts": ["def"], "max_tokens": 500, "temperature": 0, "ignore_eos": True})
    counted = wait_for(lambda: generated_total(url) > before and generated_total(url), 30, "the sequence to end")
    assert counted - before < 500


def test_a_long_prompt_is_refused_naming_the_lengths_or_truncated_from_the_left(worker: tuple[str, Path]) -> None:
    url, _ = worker
    prompt = "the quick brown fox " * 200  # far past the 512-token context
    refused = httpx.post(f"{url}/v1/completions", timeout=60, json={"prompt": prompt, "max_tokens": 16})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and f"maximum context length is {CONTEXT}" in error["message"]
    kept = httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"prompt": prompt, "max_tokens": 16, "truncate": "left", "temperature": 0})
    assert kept.status_code == 200
    usage = kept.json()["usage"]
    assert usage["prompt_tokens"] == CONTEXT - 16 and usage["completion_tokens"] <= 16
    assert httpx.post(f"{url}/generate", timeout=60, json={"prompts": [prompt], "truncate": "middle"}).json()[
        "field"] == "truncate"


def test_tokenize_counts_chat_messages_through_the_template(worker: tuple[str, Path]) -> None:
    url, _ = worker
    messages = [{"role": "user", "content": "Hello there"}]
    counted = httpx.post(f"{url}/tokenize", timeout=30, json={"messages": messages}).json()["count"]
    plain = httpx.post(f"{url}/tokenize", timeout=30, json={"prompt": "Hello there"}).json()["count"]
    assert counted > plain  # the template's role markers are counted too


def test_one_log_line_per_request_with_its_id_and_timing(worker: tuple[str, Path]) -> None:
    url, log = worker
    marker = "3b0c2a1e-6f7d-4c58-9a43-0d5e8f1b2c77"
    httpx.post(f"{url}/generate", timeout=60, headers={"x-request-id": marker},
               json={"prompts": ["Hello"], "max_tokens": 4})
    line = wait_for(lambda: next((entry for entry in log.read_text().splitlines() if marker in entry), None), 10,
                    "the worker's log line")
    assert re.search(rf"POST /generate 200 [\d.]+ms tokens=\d+ id={marker}", line)
    assert "Hello" not in line
