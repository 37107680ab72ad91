"""Streams stream: on a fresh install (no profile) a stream reaches the client token by token, after a
short prefix that still catches a failing or empty first attempt; the whole answer is held only where
a measurement or the serve's own setting asks for it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.live import scripted_upstream, until_routed
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DELAY_MS = 250


@pytest.fixture(scope="module")
def slow_upstream(module_logs: Path) -> Iterator[str]:
    """Six tokens, a quarter second apart: a stream held whole would arrive in one burst at the end."""
    with scripted_upstream(module_logs, deltas=6, delay_ms=DELAY_MS) as url:
        yield url


@pytest.fixture
def key() -> str:
    return create_key(f"commit-{uuid.uuid4().hex[:6]}").secret


def record_for(request_id: str) -> DecisionRecord:
    def written() -> DecisionRecord | None:
        drain_decisions()
        return DecisionRecord.objects.filter(request_id=request_id).first()

    return wait_for(written, 10, "the decision record to be written")


def test_an_unmeasured_serve_streams_token_by_token(anvil: str, key: str, slow_upstream: str) -> None:
    name = f"fresh-{uuid.uuid4().hex[:6]}"
    Serve.objects.create(name=name, tier="fast", base_url=f"{slow_upstream}/v1", served_model="m")
    until_routed(anvil, key, {name: "allow-with-verify"})  # no profile: the default verdict
    client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
    arrivals = []
    raw = client.chat.completions.with_raw_response.create(model=name, stream=True,
                                                            messages=[{"role": "user", "content": "hi"}])
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    # Token by token: the first reached the client about 5 delays before the last, not in one burst.
    assert arrivals[-1] - arrivals[0] > 4 * DELAY_MS / 1000
    assert record_for(raw.headers["x-request-id"]).attempts[0]["commit"] == "prefix"


@pytest.mark.parametrize("failure", ["error500", "exhausted"])
def test_the_prefix_still_falls_back_from_a_failed_or_empty_start(anvil: str, key: str, module_logs: Path,
                                                                  slow_upstream: str, failure: str) -> None:
    with scripted_upstream(module_logs, force_scenario=failure) as bad:
        first, second = f"bad-{uuid.uuid4().hex[:6]}", f"good-{uuid.uuid4().hex[:6]}"
        Serve.objects.create(name=first, tier="fast", base_url=f"{bad}/v1", served_model="bad")
        Serve.objects.create(name=second, tier="heavy", base_url=f"{slow_upstream}/v1", served_model="good")
        until_routed(anvil, key, {first: "allow-with-verify", second: "allow-with-verify"})
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(model="auto", stream=True,
                                                                messages=[{"role": "user", "content": "hi"}])
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-anvil-served-by"] == second and text.startswith("tok0")
    attempts = record_for(raw.headers["x-request-id"]).attempts
    assert [(a["outcome"], a["commit"]) for a in attempts] == [("fallback", "prefix"), ("served", "prefix")]


def test_a_serve_set_to_strict_holds_the_whole_stream(anvil: str, key: str, module_logs: Path,
                                                      slow_upstream: str) -> None:
    with scripted_upstream(module_logs, force_scenario="truncated") as truncating:
        first, second = f"strict-{uuid.uuid4().hex[:6]}", f"good-{uuid.uuid4().hex[:6]}"
        Serve.objects.create(name=first, tier="fast", base_url=f"{truncating}/v1", served_model="t",
                             stream_verify="strict")
        Serve.objects.create(name=second, tier="heavy", base_url=f"{slow_upstream}/v1", served_model="good",
                             stream_verify="off")
        until_routed(anvil, key, {first: "allow-with-verify", second: "allow-with-verify"})
        client = openai.OpenAI(base_url=f"{anvil}/v1", api_key=key, max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(model="auto", stream=True,
                                                                messages=[{"role": "user", "content": "hi"}])
        list(raw.parse())
    attempts = record_for(raw.headers["x-request-id"]).attempts
    # The truncated answer was held whole and refused; the next serve streamed from its first byte.
    assert [(a["outcome"], a["commit"]) for a in attempts] == [("fallback", "strict"), ("served", "off")]
    assert attempts[0]["verify"] == ["truncated"]
