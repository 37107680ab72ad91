"""GET /v1/models through the ASGI application: authentication and the OpenAI error shape."""

from __future__ import annotations

import pytest

from inference.auth import KEY_CACHE
from inference.keys import create_key, revoke_key
from serves.catalog import SERVE_CATALOG
from serves.models import Serve
from tests.support.asgi import call
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    KEY_CACHE.invalidate()
    SERVE_CATALOG.invalidate()


def assert_openai_error(answer: object, status: int) -> dict[str, object]:
    assert answer.status == status  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_without_a_key_the_answer_is_401_saying_how_to_pass_one() -> None:
    answer = call("GET", "/v1/models")
    error = assert_openai_error(answer, 401)
    assert "Authorization: Bearer" in error["message"] and "x-api-key" in error["message"]
    assert error["code"] == "invalid_api_key"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.headers["x-request-id"].startswith("req_")


def test_a_bearer_key_lists_the_enabled_serves() -> None:
    minted = create_key("sdk")
    answer = call("GET", "/v1/models", headers={"Authorization": f"Bearer {minted.secret}"})
    assert answer.status == 200
    assert answer.json() == {"object": "list", "data": []}  # no serves yet
    assert answer.headers["content-length"] == str(len(answer.body))


def test_an_x_api_key_header_works_too() -> None:
    minted = create_key("anthropic-sdk")
    assert call("GET", "/v1/models", headers={"x-api-key": minted.secret}).status == 200


def test_a_wrong_or_revoked_key_is_refused() -> None:
    minted = create_key("temp")
    assert_openai_error(call("GET", "/v1/models", headers={"x-api-key": minted.secret + "x"}), 401)
    assert_openai_error(call("GET", "/v1/models", headers={"x-api-key": "sk-not-ours"}), 401)
    revoke_key("temp")
    KEY_CACHE.invalidate()
    assert_openai_error(call("GET", "/v1/models", headers={"x-api-key": minted.secret}), 401)


def test_the_callers_request_id_is_echoed_when_sane() -> None:
    answer = call("GET", "/v1/models", headers={"X-Request-Id": "trace-42"})
    assert answer.headers["x-request-id"] == "trace-42"
    answer = call("GET", "/v1/models", headers={"X-Request-Id": "bad id\twith spaces"})
    assert answer.headers["x-request-id"].startswith("req_")


def test_wrong_method_is_405_in_openai_shape() -> None:
    minted = create_key("poster")
    answer = call("POST", "/v1/models", headers={"x-api-key": minted.secret})
    assert assert_openai_error(answer, 405)["code"] == "method_not_allowed"


def test_unknown_front_door_paths_are_404_in_their_dialect() -> None:
    assert assert_openai_error(call("POST", "/v1/nothing-here"), 404)["code"] == "unknown_route"
    answer = call("POST", "/v1/messages/count_tokens_x")
    assert answer.status == 404
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "not_found_error"


def test_models_lists_the_enabled_serves_and_notices_new_ones(settings: object) -> None:
    settings.ANVIL_SERVE_SYNC_INTERVAL = 0  # type: ignore[attr-defined]
    headers = {"x-api-key": create_key("lister").secret}
    Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="gpt-oss-20b")
    Serve.objects.create(name="off", tier="fast", base_url="http://127.0.0.1:2/v1", served_model="x", enabled=False)
    listed = call("GET", "/v1/models", headers=headers).json()["data"]
    assert [model["id"] for model in listed] == ["fast"]
    assert listed[0]["object"] == "model" and listed[0]["anvil"]["served_model"] == "gpt-oss-20b"
    Serve.objects.create(name="heavy", tier="heavy", base_url="http://127.0.0.1:3/v1", served_model="q")
    wait_for(lambda: [m["id"] for m in call("GET", "/v1/models", headers=headers).json()["data"]] == ["fast", "heavy"],
             5, "the new serve to be listed")
