"""/healthz, /readyz and /metrics through the ASGI application."""

from __future__ import annotations

import pytest

from tests.support.asgi import call
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_without_touching_anything(settings: object) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # type: ignore[attr-defined]
    answer = call("GET", "/healthz")
    assert answer.status == 200 and answer.json() == {"status": "ok"}


def test_readyz_is_200_when_database_migrations_and_redis_are_fine() -> None:
    answer = call("GET", "/readyz")
    assert answer.status == 200, answer.body
    assert answer.json()["checks"] == {"database": "ok", "migrations": "ok", "redis": "ok"}


def test_readyz_is_503_naming_redis_when_redis_is_unreachable(settings: object) -> None:
    settings.REDIS_URL = f"redis://:secret-pass@127.0.0.1:{free_port()}/0"  # type: ignore[attr-defined]
    answer = call("GET", "/readyz")
    assert answer.status == 503
    body = answer.json()
    assert body["status"] == "unready" and body["failing"] == ["redis"]
    assert body["checks"]["redis"].startswith("error:")
    assert "secret-pass" not in answer.body.decode()
    assert body["checks"]["database"] == "ok"


def test_metrics_count_requests_by_route_and_status() -> None:
    call("GET", "/v1/models")  # 401
    call("GET", "/healthz")
    text = call("GET", "/metrics").body.decode()
    assert 'anvil_http_requests_total{method="GET",route="/v1/models",status="401"}' in text
    assert 'anvil_http_request_duration_seconds_bucket{le="0.001",route="/healthz",status="200"}' in text


def test_metrics_do_not_label_by_raw_path() -> None:
    call("GET", "/v1/some/random/path/123")
    text = call("GET", "/metrics").body.decode()
    assert "/v1/some/random/path/123" not in text
    assert 'route="/v1/*"' in text
