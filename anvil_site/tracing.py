"""OpenTelemetry traces of the front door: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set.

On, each front-door request is a span (``anvil.request``, continuing a client's W3C ``traceparent``), with
children for the decision (``anvil.decide``), each attempt (``anvil.attempt``), the wait in a serve's queue
(``anvil.queue_wait``) and the upstream call (``anvil.upstream``), whose context goes upstream as
``traceparent`` (vLLM continues traces it receives). Spans carry metadata only, never prompt text. They are
batched and exported over OTLP/HTTP by the SDK, configured by the standard ``OTEL_*`` variables
(``OTEL_SERVICE_NAME``, ``OTEL_BSP_SCHEDULE_DELAY``, …).

Off, the SDK is never imported and every hook is a shared no-op context manager: the hot path pays a
function call (``bench/RESULTS.md``: the cost of tracing, on and off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

_NOTHING = contextlib.nullcontext()
_tracer: Any = None


def wanted() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service: str) -> None:
    """Start exporting spans when an OTLP endpoint is configured (once per process)."""
    global _tracer
    if _tracer is not None or not wanted():
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("anvil")
    log.info("tracing on: spans go to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def active() -> bool:
    return _tracer is not None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (a shared no-op when tracing is off)."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=dict(attributes or {}))


@contextlib.contextmanager
def request_span(name: str, headers: Mapping[bytes, bytes], attributes: Mapping[str, Any]) -> Iterator[Any]:
    """The root span of a front-door request, continuing the client's ``traceparent`` when it sent one."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate

    carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers.items()
               if key in (b"traceparent", b"tracestate")}
    with _tracer.start_as_current_span(name, context=propagate.extract(carrier), attributes=dict(attributes)) as root:
        yield root


def past_span(name: str, seconds: float, attributes: Mapping[str, Any] | None = None) -> None:
    """A span that ended now and lasted ``seconds`` (a wait measured before it was known to be one)."""
    if _tracer is None:
        return
    end = time.time_ns()
    _tracer.start_span(name, start_time=end - int(seconds * 1e9), attributes=dict(attributes or {})).end(end_time=end)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the current span's ``traceparent`` (unchanged when tracing is off)."""
    if _tracer is None:
        return headers
    from opentelemetry import propagate

    carried = dict(headers)
    propagate.inject(carried)
    return carried


def inject_into(request: Any) -> Any:
    """An upstream request (a dataclass with ``headers``) carrying the current span's ``traceparent``."""
    if _tracer is None:
        return request
    return dataclasses.replace(request, headers=inject(request.headers))
