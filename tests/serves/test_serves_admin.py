"""The serves admin: live state in the list, filters, and lifecycle buttons that reach a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from serves.models import Serve, ServeEvent
from tests.support.celery_worker import celery_worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw-for-tests-only"))
    return client


def test_list_shows_state_and_filters_by_group(operator_client: Client) -> None:
    Serve.objects.create(name="a", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m", groups=["g1"],
                         state="remote", health="ok")
    Serve.objects.create(name="b", tier="heavy", base_url="http://127.0.0.1:2/v1", served_model="m", groups=["g2"])
    page = operator_client.get("/admin/serves/serve/").content.decode()
    assert ">remote<" in page and ">ok<" in page
    filtered = operator_client.get("/admin/serves/serve/?group=g2").content.decode()
    assert 'href="/admin/serves/serve/' in filtered and ">b<" in filtered and ">a<" not in filtered


def test_edit_then_bring_up_from_the_admin(operator_client: Client, docker_engine, compose_serve,
                                           logs_dir: Path) -> None:
    serve, project = compose_serve(name="edited")
    form = operator_client.get(f"/admin/serves/serve/{serve.pk}/change/")
    assert b"Bring up" in form.content
    with celery_worker(logs_dir):
        answer = operator_client.post(f"/admin/serves/serve/{serve.pk}/lifecycle/up/")
        assert answer.status_code == 302
        event = wait_for(lambda: ServeEvent.objects.filter(serve=serve, action="up").first(), 120,
                         "the up event from the worker")
    assert event.outcome == "ok" and event.requested_by == "admin:ops"
    assert docker_engine.containers.get(project.container).status == "running"
    history = operator_client.get(f"/admin/serves/serve/{serve.pk}/change/").content.decode()
    assert "admin:ops" in history and "compose up" in history


def test_lifecycle_buttons_refuse_get(operator_client: Client) -> None:
    serve = Serve.objects.create(name="r", tier="t", base_url="http://127.0.0.1:1/v1", served_model="m")
    assert operator_client.get(f"/admin/serves/serve/{serve.pk}/lifecycle/up/").status_code == 405
