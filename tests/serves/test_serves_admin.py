"""The serves admin: live state in the list, filters, and lifecycle buttons that reach a real worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from serves.models import ModelState, Serve, ServeEvent
from serves.runtimes.process import PROCESSES
from tests.support.celery_worker import celery_worker
from tests.support.processes import ROOT, free_port
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


def test_load_and_unload_buttons_drive_a_process_serve_through_a_real_worker(operator_client: Client,
                                                                             logs_dir: Path) -> None:
    script = str(ROOT / "tests" / "support" / "scripted_upstream.py")
    # The scripted upstream, after one line of log, as an engine writes at start-up.
    engine = (f"import runpy, sys; print('engine starting on port', sys.argv[2], flush=True); "
              f"runpy.run_path({script!r}, run_name='__main__')")
    serve = Serve.objects.create(name="buttons", tier="fast", runtime="process", port=free_port(),
                                 served_model="scripted", command=[sys.executable, "-c", engine, "--port", "{port}"],
                                 ready_timeout=30)
    page = operator_client.get(f"/admin/serves/serve/{serve.pk}/change/").content.decode()
    assert ">Load</button>" in page and "Unload" in page and ">unloaded<" in page
    with celery_worker(logs_dir):
        assert operator_client.post(f"/admin/serves/serve/{serve.pk}/model/load/").status_code == 302
        wait_for(lambda: Serve.objects.get(pk=serve.pk).model_state == ModelState.LOADED, 60, "the serve loaded")
        page = operator_client.get(f"/admin/serves/serve/{serve.pk}/change/").content.decode()
        assert ">loaded<" in page and "admin:ops" in page
        assert "engine starting on port" in page  # the engine's own log, shown

        # Unloading turns traffic away: a GET only asks, and says how to undo it.
        confirm = operator_client.get(f"/admin/serves/serve/{serve.pk}/model/unload/")
        assert confirm.status_code == 200 and "503 model_not_loaded" in confirm.content.decode()
        assert "manage.py serves load buttons" in confirm.content.decode()
        assert Serve.objects.get(pk=serve.pk).model_state == ModelState.LOADED
        assert operator_client.post(f"/admin/serves/serve/{serve.pk}/model/unload/").status_code == 302
        wait_for(lambda: Serve.objects.get(pk=serve.pk).model_state == ModelState.UNLOADED, 60, "the serve unloaded")
    assert PROCESSES.record(serve) is None


def test_a_load_refused_by_the_state_is_an_error_message_not_a_500(operator_client: Client) -> None:
    serve = Serve.objects.create(name="busy", tier="fast", runtime="process", port=free_port(), served_model="m",
                                 command=["true"], model_state=ModelState.UNLOADING)
    answer = operator_client.post(f"/admin/serves/serve/{serve.pk}/model/load/", follow=True)
    assert answer.status_code == 200 and "busy is unloading" in answer.content.decode()
    assert Serve.objects.get(pk=serve.pk).model_state == ModelState.UNLOADING
