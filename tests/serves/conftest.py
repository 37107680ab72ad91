from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from serves.models import Serve
from tests.support.docker_host import ComposeProject, docker_client, ensure_host_image, new_project, remove_container


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    client = docker_client()
    ensure_host_image(client)
    return client


@pytest.fixture
def compose_serve(docker_engine: docker.DockerClient, tmp_path: Path
                  ) -> Iterator[Callable[..., tuple[Serve, ComposeProject]]]:
    """Make a Serve row backed by a real compose project running our fake OpenAI server."""
    made: list[ComposeProject] = []

    def make(name: str = "fake", **fields: object) -> tuple[Serve, ComposeProject]:
        project = new_project(tmp_path, tag=str(len(made)))
        made.append(project)
        serve = Serve.objects.create(
            name=name, tier="fast", engine="vllm", container=project.container, port=project.port,
            served_model=project.model, compose_file=str(project.file), compose_service=project.service, **fields,
        )
        return serve, project

    yield make
    for project in made:
        remove_container(docker_engine, project.container)
