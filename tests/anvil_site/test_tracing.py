"""Traces with real processes: Anvil under Daphne exporting over OTLP/HTTP to a collector stand-in (an HTTP server
in this test that decodes what it receives), a scripted upstream that records the headers it gets.

* A request that comes with a W3C traceparent continues that trace: a span for the request, with children for
  the decision, the attempt and the upstream call; the upstream receives the upstream span's traceparent.
* Spans carry metadata only: the prompt's text is in none of them.
* Tracing off (no endpoint): nothing is sent upstream but what the client sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.keys import create_key
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.otlp import Collector, collector
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CANARY = "zebra-canary-4711"  # the prompt: it must appear in no span
CLIENT_TRACE, CLIENT_SPAN = uuid.uuid4().hex, uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def otlp() -> Iterator[Collector]:
    with collector() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def traced(django_db_setup: None, module_logs: Path, otlp: Collector) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2",
                    OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
                    OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="anvil-test") as url:
        yield url


@pytest.fixture
def key(upstream: str) -> str:
    forget_breakers("traced")
    allow_tiers("fast")
    Serve.objects.create(name="traced", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
    return create_key(f"trace-{uuid.uuid4().hex[:6]}").secret


def ask(anvil: str, key: str, upstream: str, traceparent: str | None) -> dict[str, str]:
    """A streamed request; the headers the upstream received for it."""
    httpx.delete(f"{upstream}/_requests")
    headers = {"authorization": f"Bearer {key}"} | ({"traceparent": traceparent} if traceparent else {})
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", headers=headers, timeout=30, json={
            "model": "traced", "stream": True, "messages": [{"role": "user", "content": CANARY}]}) as answer:
        assert answer.status_code == 200
        lines = list(answer.iter_lines())  # the whole stream: leaving early would be a client gone
        assert any('"content": "tok' in line for line in lines)
    return {k.lower(): v for k, v in httpx.get(f"{upstream}/_requests").json()[-1]["headers"].items()}


def test_a_request_continues_the_clients_trace_and_hands_it_upstream(traced: str, key: str, upstream: str,
                                                                     otlp: Collector) -> None:
    until_routed(traced, key, {"traced": "allow"})
    seen = ask(traced, key, upstream, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")

    def spans() -> dict[str, dict[str, Any]] | None:
        ours = {s["name"]: s for s in otlp.spans if s["trace"] == CLIENT_TRACE}
        return ours if {"anvil.request", "anvil.decide", "anvil.attempt", "anvil.upstream"} <= set(ours) else None

    found = wait_for(spans, 15, "the request's spans at the collector")
    root = found["anvil.request"]
    assert root["parent"] == CLIENT_SPAN and root["service"] == "anvil-test"
    assert found["anvil.decide"]["parent"] == root["id"] and found["anvil.attempt"]["parent"] == root["id"]
    assert found["anvil.upstream"]["parent"] == found["anvil.attempt"]["id"]
    assert "traced" in root["attributes"]["anvil.served_by"]
    assert "200" in root["attributes"]["http.response.status_code"]
    # The upstream continues the trace from Anvil's upstream span.
    assert seen["traceparent"].split("-")[1:3] == [CLIENT_TRACE, found["anvil.upstream"]["id"]]
    # Metadata only: the prompt is in no span Anvil sent.
    assert not any(CANARY in value for span in otlp.spans for value in span["attributes"].values())


def test_without_an_endpoint_nothing_is_traced(django_db_setup: None, module_logs: Path, key: str,
                                               upstream: str) -> None:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as plain:
        until_routed(plain, key, {"traced": "allow"})
        assert "traceparent" not in ask(plain, key, upstream, None)
        passed_on = ask(plain, key, upstream, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        assert passed_on.get("traceparent") in (None, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
