"""The serve lifecycle against a real Docker engine and real Compose (see tests/support/docker_host.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest

from serves.actions import do_lifecycle, do_status
from serves.models import Serve, ServeEvent
from serves.tasks import enqueue
from tests.support.celery_worker import celery_worker
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def container(engine: docker.DockerClient, name: str) -> docker.models.containers.Container:
    return engine.containers.get(name)


def wait_healthy(serve: Serve) -> Serve:
    def healthy() -> bool:
        do_status(serve.pk, "test", record=False)
        serve.refresh_from_db()
        return serve.health == "ok"

    wait_for(healthy, 30, f"{serve.name} to answer its health probe")
    return serve


def test_up_creates_a_missing_container_and_status_reads_health_and_model(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    result = do_lifecycle(serve.pk, "up", "test")
    assert result.outcome == "ok", result.output_tail
    assert result.state_before == "missing" and result.state_after == "running"
    assert result.commands[0][-5:] == ["-f", str(project.file), "up", "-d", project.service]
    wait_healthy(serve)
    assert serve.reported_model == project.model
    assert serve.gpu_memory == "unknown"  # no nvidia-smi here: degrade, don't crash
    event = ServeEvent.objects.get(pk=result.event_id)
    assert event.action == "up" and event.commands == result.commands and event.finished_at is not None


def test_up_starts_an_exited_container_without_recreating_it(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    assert do_lifecycle(serve.pk, "up", "test").outcome == "ok"
    first_id = container(docker_engine, project.container).id
    container(docker_engine, project.container).stop(timeout=5)
    result = do_lifecycle(serve.pk, "up", "test")
    assert (result.outcome, result.state_before, result.state_after) == ("ok", "exited", "running")
    assert container(docker_engine, project.container).id == first_id


def test_up_unpauses_a_paused_container_keeping_its_id(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    do_lifecycle(serve.pk, "up", "test")
    running = container(docker_engine, project.container)
    running.pause()
    result = do_lifecycle(serve.pk, "up", "test")
    assert result.outcome == "ok" and result.commands == [["docker", "unpause", project.container]]
    after = container(docker_engine, project.container)
    assert after.id == running.id and after.status == "running"


def test_a_changed_compose_config_is_recreated(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    do_lifecycle(serve.pk, "up", "test")
    before = container(docker_engine, project.container).id
    assert do_lifecycle(serve.pk, "up", "test").outcome == "ok"  # unchanged: kept
    assert container(docker_engine, project.container).id == before
    project.write(environment={"MODEL_FLAG": "changed"})
    result = do_lifecycle(serve.pk, "up", "test")
    assert result.outcome == "ok" and result.state_after == "running"
    recreated = container(docker_engine, project.container)
    assert recreated.id != before
    assert "MODEL_FLAG=changed" in recreated.attrs["Config"]["Env"]


def test_down_stops_a_paused_container(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    do_lifecycle(serve.pk, "up", "test")
    container(docker_engine, project.container).pause()
    result = do_lifecycle(serve.pk, "down", "test")
    assert (result.outcome, result.state_before, result.state_after) == ("ok", "paused", "exited")
    assert do_lifecycle(serve.pk, "down", "test").outcome == "nothing"


def test_a_restarting_container_is_left_alone_with_an_explanation(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    project.write(environment={"FAKE_SERVE_CRASH": "1"}, restart="always")
    do_lifecycle(serve.pk, "up", "test")
    first_id = container(docker_engine, project.container).id
    wait_for(lambda: container(docker_engine, project.container).attrs["State"]["Status"] == "restarting", 30,
             "the crashing container to be restarting")

    seen = []

    def refused_while_restarting() -> bool:
        result = do_lifecycle(serve.pk, "up", "test")
        seen.append(result)
        return result.state_before == "restarting"

    wait_for(refused_while_restarting, 30, "an up that observes the restarting state")
    result = seen[-1]
    assert result.outcome == "refused" and result.commands == []
    assert "restarting" in result.detail and "left for the operator" in result.detail
    assert container(docker_engine, project.container).id == first_id
    down = do_lifecycle(serve.pk, "down", "test")  # restarting holds the GPU: down stops it
    assert down.outcome in ("ok", "nothing")


def test_dry_run_starts_nothing_and_records_nothing(docker_engine, compose_serve) -> None:
    serve, project = compose_serve()
    result = do_lifecycle(serve.pk, "up", "test", dry_run=True)
    assert result.outcome == "dry-run" and "up" in result.commands[0] and str(project.file) in result.commands[0]
    with pytest.raises(docker.errors.NotFound):
        docker_engine.containers.get(project.container)
    assert not ServeEvent.objects.exists()


def test_two_concurrent_ups_of_one_serve_run_it_once(docker_engine, compose_serve) -> None:
    serve, _project = compose_serve()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def bring_up() -> None:
        barrier.wait()
        outcomes.append(do_lifecycle(serve.pk, "up", "test").outcome)

    threads = [threading.Thread(target=bring_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["busy", "ok"]
    assert ServeEvent.objects.filter(serve=serve, action="up", outcome="ok").count() == 1
    serve.refresh_from_db()
    assert serve.busy_token == ""  # released


def test_status_of_a_stopped_serve_names_the_command_that_starts_it(docker_engine, compose_serve) -> None:
    serve, _project = compose_serve()
    result = do_status(serve.pk, "test")
    assert result.state_after == "missing"
    assert f"python manage.py serves up {serve.name}" in result.detail


def test_the_celery_path_brings_a_serve_up_through_a_real_worker(docker_engine, compose_serve, logs_dir: Path):
    serve, project = compose_serve()
    with celery_worker(logs_dir):
        enqueue("up", [serve.pk], "admin:tester")
        event = wait_for(lambda: ServeEvent.objects.filter(serve=serve, action="up").first(), 120,
                         "the worker to record the up event")
    assert event.outcome == "ok", event.output_tail
    assert event.requested_by == "admin:tester"
    assert container(docker_engine, project.container).status == "running"
