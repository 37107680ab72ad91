"""Traces with real processes: Anvil under Daphne exporting over OTLP/HTTP to a collector stand-in (an HTTP server
in this test that decodes what it receives), a scripted upstream that records the headers it gets.

* A request that comes with a W3C traceparent continues that trace: a span for the request, with children for
  the decision, the attempt and the upstream call; the upstream receives the upstream span's traceparent.
* Spans carry metadata only: the prompt's text is in none of them.
* Tracing off (no endpoint): nothing is sent upstream but what the client sent.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from inference.keys import create_key
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CANARY = "zebra-canary-4711"  # the prompt: it must appear in no span
CLIENT_TRACE, CLIENT_SPAN = uuid.uuid4().hex, uuid.uuid4().hex[:16]


class Collector(ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf trace exports and keeps every span it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, Any]] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append({  # type: ignore[attr-defined]
                        "name": span.name, "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(), "service": service,
                        "attributes": {a.key: str(a.value) for a in span.attributes}})
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def traced(django_db_setup: None, module_logs: Path, collector: Collector) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2",
                    OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
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
                                                                     collector: Collector) -> None:
    until_routed(traced, key, {"traced": "allow"})
    seen = ask(traced, key, upstream, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")

    def spans() -> dict[str, dict[str, Any]] | None:
        ours = {s["name"]: s for s in collector.spans if s["trace"] == CLIENT_TRACE}
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
    assert not any(CANARY in value for span in collector.spans for value in span["attributes"].values())


def test_without_an_endpoint_nothing_is_traced(django_db_setup: None, module_logs: Path, key: str,
                                               upstream: str) -> None:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as plain:
        until_routed(plain, key, {"traced": "allow"})
        assert "traceparent" not in ask(plain, key, upstream, None)
        passed_on = ask(plain, key, upstream, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        assert passed_on.get("traceparent") in (None, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
