"""Operator pages through Django under ASGI: login, the styled admin, the REST API and its schema."""

from __future__ import annotations

import hashlib
import re

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from inference.keys import create_key
from inference.models import ApiKey
from tests.support.admin_forms import submitted_form
from tests.support.asgi import call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator() -> object:
    return get_user_model().objects.create_superuser("ops", "", "correct-horse-battery")


@pytest.fixture
def operator_client(operator: object) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)  # type: ignore[arg-type]
    return client


def test_console_sends_anonymous_visitors_to_the_login_page() -> None:
    answer = call("GET", "/")
    assert answer.status == 302
    assert answer.headers["location"].startswith("/admin/login/?next=/")


def test_console_shows_the_stack_to_an_operator(operator_client: Client) -> None:
    page = operator_client.get("/").content.decode()
    assert "Readiness" in page and "/ws/status/" in page
    assert "API keys" in page


def test_admin_is_styled_with_debug_off(settings: object) -> None:
    assert settings.DEBUG is False  # type: ignore[attr-defined]
    login = call("GET", "/admin/login/")
    assert login.status == 200
    stylesheets = re.findall(r'href="(/static/[^"]+\.css)"', login.body.decode())
    assert stylesheets, "the admin login page links no stylesheet"
    for href in stylesheets:
        css = call("GET", href)
        assert css.status == 200, href
        assert css.headers["content-type"].startswith("text/css")


def test_openapi_schema_is_published() -> None:
    answer = call("GET", "/api/schema/")
    assert answer.status == 200
    assert answer.body.startswith(b"openapi: 3")
    assert b"/api/keys/" in answer.body


def test_rest_api_requires_an_operator_and_never_shows_secrets(operator_client: Client) -> None:
    minted = create_key("listed")
    assert Client().get("/api/keys/").status_code == 403
    answer = operator_client.get("/api/keys/")
    assert answer.status_code == 200
    body = answer.content.decode()
    assert '"name":"listed"' in body and minted.key.prefix in body
    assert minted.secret not in body and minted.key.secret_hash not in body


def test_admin_creates_a_key_and_shows_its_secret_exactly_once(operator_client: Client) -> None:
    page = operator_client.get("/admin/inference/apikey/add/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)  # type: ignore[union-attr]
    form_data = submitted_form(page, name="from-admin", scopes=["inference", "admin"], csrfmiddlewaretoken=token)
    assert form_data["weight"] == 1.0  # the fair-share fields as the page shows them
    answer = operator_client.post("/admin/inference/apikey/add/", form_data)
    assert answer.status_code == 200
    secret = re.search(r'value="(anv_[^"]+)"', answer.content.decode()).group(1)  # type: ignore[union-attr]
    row = ApiKey.objects.get(name="from-admin")
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert sorted(row.scopes) == ["admin", "inference"]
    assert secret not in operator_client.get(f"/admin/inference/apikey/{row.pk}/change/").content.decode()


def test_admin_post_without_csrf_token_is_refused(operator_client: Client) -> None:
    answer = operator_client.post("/admin/inference/apikey/add/", {"name": "forged"})
    assert answer.status_code == 403
    assert not ApiKey.objects.filter(name="forged").exists()


def _status_socket(cookie: str | None) -> tuple[bool, object]:
    from anvil_site.asgi import application

    async def go() -> tuple[bool, object]:
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(application, "/ws/status/", headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        message = await communicator.receive_json_from(timeout=10) if connected else None
        await communicator.disconnect()
        return connected, message

    return async_to_sync(go)()


def test_status_websocket_refuses_anonymous_visitors() -> None:
    connected, _ = _status_socket(None)
    assert connected is False


def test_status_websocket_pushes_readiness_to_an_operator(operator_client: Client) -> None:
    session = operator_client.cookies["sessionid"].value
    connected, message = _status_socket(f"sessionid={session}")
    assert connected is True
    assert message == {"type": "status", "ready": True,
                       "checks": {"database": "ok", "migrations": "ok", "redis": "ok"}}
